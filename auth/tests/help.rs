//! `lula-auth serve --help` names every route the service answers, so an
//! operator reading it knows what to expose and what to keep private.

#[test]
fn serve_help_lists_every_route() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lula-auth"))
        .args(["serve", "--help"])
        .output()
        .expect("run lula-auth");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for route in [
        "/register",
        "/login",
        "/renew",
        "/logout",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(help.contains(route), "{route} missing from:\n{help}");
    }
    assert!(help.contains("--admin-listen"), "{help}");
}
