//! The two listeners of a service (hub, auth): devices on one port, and the
//! operators' routes (probes, metrics, fleet) on another when asked for, so a
//! device-facing Ingress cannot reach them by a path rule someone forgot.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpListener;

/// The device listener and, with `--admin-listen`, the admin listener.
#[derive(Debug)]
pub struct Listeners {
    /// Where devices connect.
    pub devices: TcpListener,
    /// Where `admin_routes` are served, or `None` to serve them on the device
    /// port (the layout before `--admin-listen`, deprecated).
    pub admin: Option<TcpListener>,
}

/// Binds `listen` and, when given, `admin_listen`, logging both; `admin_routes`
/// names what the admin listener serves (for the log lines). An error names
/// the address and the flag it came from.
pub async fn bind(
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
    admin_routes: &str,
) -> io::Result<Listeners> {
    let devices = bind_one(listen, "--listen").await?;
    tracing::info!(addr = %devices.local_addr()?, "listening for devices");
    let admin = match admin_listen {
        Some(addr) => {
            let admin = bind_one(addr, "--admin-listen").await?;
            tracing::info!(addr = %admin.local_addr()?, routes = admin_routes, "admin listener");
            Some(admin)
        }
        None => {
            tracing::warn!(
                routes = admin_routes,
                "no --admin-listen: the admin routes are on the device port (deprecated)"
            );
            None
        }
    };
    Ok(Listeners { devices, admin })
}

async fn bind_one(addr: SocketAddr, flag: &str) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("bind {flag} {addr}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_both_and_names_the_flag_of_a_taken_address() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let both = bind(any, Some(any), "/metrics").await.unwrap();
        let admin = both.admin.expect("admin listener");
        assert_ne!(
            both.devices.local_addr().unwrap(),
            admin.local_addr().unwrap()
        );
        let taken = admin.local_addr().unwrap();
        let err = bind(any, Some(taken), "/metrics").await.unwrap_err();
        assert!(err.to_string().contains("--admin-listen"), "{err}");
        let alone = bind(any, None, "/metrics").await.unwrap();
        assert!(alone.admin.is_none());
    }
}
