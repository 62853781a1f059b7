//! Request/response over the synced streams, both ways, through the real
//! system (conventions in `lula_protocol::rpc`).

use std::time::Duration;

use lula_e2e::{Cloud, Device, field};
use lula_protocol::rpc;
use lula_protocol::{ClientId, StreamId};
use tokio_util::sync::CancellationToken;

/// Waits until the device's request handler has taken its starting point
/// (the end of `in:x` on its first run): requests after that are answered,
/// earlier ones would not be.
async fn wait_for_handler_start(device: &Device) {
    lula_testkit::eventually(
        "the request handler to take its starting point",
        Duration::from_secs(60),
        || async {
            let cursor: Option<String> = redis::cmd("HGET")
                .arg(device.keys.state())
                .arg(lula_client::rpc::RPC_CURSOR_FIELD)
                .query_async(&mut device.conn().await)
                .await
                .unwrap();
            cursor.map(|_| ())
        },
    )
    .await;
}

/// Entries of the device's `out:x` that answer a request.
async fn answers_on_device(device: &Device) -> usize {
    device
        .out_entries()
        .await
        .iter()
        .filter(|e| rpc::answers(e).is_some())
        .count()
}

/// A cloud service that answers every request in `lula-hub:in:x` with
/// `echo <method>` plus the request's arguments, until `stop`.
fn cloud_responder(cloud: &Cloud, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    let (url, keys) = (cloud.redis_url().to_owned(), cloud.keys.clone());
    tokio::spawn(async move {
        let mut conn = lula_client::rpc::connect(&url).await.unwrap();
        let mut after = StreamId::ZERO;
        while !stop.is_cancelled() {
            let v: redis::Value = redis::cmd("XREAD")
                .arg("BLOCK")
                .arg(200)
                .arg("STREAMS")
                .arg(keys.in_stream())
                .arg(after.to_string())
                .query_async(&mut conn)
                .await
                .unwrap();
            for e in lula_protocol::redis_value::entries_from_read(v).unwrap() {
                after = e.id;
                let Some(method) = rpc::method(&e) else {
                    continue;
                };
                let client: ClientId = std::str::from_utf8(field(&e, "client").unwrap())
                    .unwrap()
                    .parse()
                    .unwrap();
                let seq: StreamId = std::str::from_utf8(field(&e, "seq").unwrap())
                    .unwrap()
                    .parse()
                    .unwrap();
                let mut reply = vec![(b"echo".to_vec(), method.as_bytes().to_vec())];
                reply.extend(rpc::payload(&e));
                let mut cmd = redis::cmd("XADD");
                cmd.arg(keys.out_stream(&client)).arg("*");
                for f in rpc::response_fields(seq, &reply) {
                    cmd.arg(f);
                }
                let _: String = cmd.query_async(&mut conn).await.unwrap();
            }
        }
    })
}

/// A running device "dev-1", a cloud responder (stopped by the token, joined
/// by the handle) and a connection to the device Redis to ask through.
async fn device_with_responder(
    cloud: &Cloud,
) -> (
    Device,
    CancellationToken,
    tokio::task::JoinHandle<()>,
    redis::aio::MultiplexedConnection,
) {
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(cloud, "dev-1", &otp);
    device.start();
    let stop = CancellationToken::new();
    let responder = cloud_responder(cloud, stop.clone());
    let conn = lula_client::rpc::connect(&device.redis.url())
        .await
        .unwrap();
    (device, stop, responder, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_asks_the_cloud_and_gets_its_answer() {
    let cloud = Cloud::start().await;
    let (device, stop, responder, mut conn) = device_with_responder(&cloud).await;

    for i in 0..3 {
        let args = vec![(b"n".to_vec(), i.to_string().into_bytes())];
        let response = lula_client::rpc::request(
            &mut conn,
            &device.keys,
            "config.get",
            &args,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        assert_eq!(
            rpc::payload(&response),
            vec![
                (b"echo".to_vec(), b"config.get".to_vec()),
                (b"n".to_vec(), i.to_string().into_bytes())
            ]
        );
    }
    stop.cancel();
    responder.await.unwrap();

    // Nobody answers now: a clear timeout, not a hang.
    let err = lula_client::rpc::request(
        &mut conn,
        &device.keys,
        "config.get",
        &[],
        Duration::from_millis(500),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, lula_client::rpc::RpcError::Timeout(_)),
        "{err}"
    );
}

/// Arguments named like lula's own fields (or those after `_`s) reach the
/// cloud handler under the names the device gave them, and the cloud's
/// answer of the same names reaches the device as written: renamed on the
/// way both ways, read back by `rpc::payload`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_with_reserved_names_arrive_as_sent_both_ways() {
    let cloud = Cloud::start().await;
    let (device, stop, responder, mut conn) = device_with_responder(&cloud).await;
    let args: Vec<(Vec<u8>, Vec<u8>)> = [
        ("seq", "1"),
        ("_client", "2"),
        ("broadcast", "3"),
        ("__seq", "4"),
        ("client", "5"),
    ]
    .iter()
    .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect();
    let response = lula_client::rpc::request(
        &mut conn,
        &device.keys,
        "echo",
        &args,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let mut expected = vec![(b"echo".to_vec(), b"echo".to_vec())];
    expected.extend(args);
    assert_eq!(rpc::payload(&response), expected);
    stop.cancel();
    responder.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_answers_each_cloud_request_exactly_once_across_restarts() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.start();
    let client: ClientId = "dev-1".parse().unwrap();

    // The handler on the device: doubles `n`.
    let serve = |stop: CancellationToken| {
        let (url, keys) = (device.redis.url(), device.keys.clone());
        tokio::spawn(async move {
            lula_client::rpc::serve(
                &url,
                &keys,
                |method, args| async move {
                    let n: u64 = args
                        .iter()
                        .find(|(k, _)| k == b"n")
                        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
                        .unwrap_or(0);
                    vec![
                        (b"method".to_vec(), method.into_bytes()),
                        (b"double".to_vec(), (2 * n).to_string().into_bytes()),
                    ]
                },
                stop,
            )
            .await
            .unwrap();
        })
    };
    let stop = CancellationToken::new();
    let server = serve(stop.clone());
    wait_for_handler_start(&device).await;

    let mut requests = Vec::new();
    let send = |n: u64| {
        let cloud = &cloud;
        async move {
            cloud
                .send_down(
                    "dev-1",
                    &[("rpc", "math.double".into()), ("n", n.to_string())],
                )
                .await
        }
    };
    for n in 0..3u64 {
        requests.push((send(n).await, n));
    }
    // The handler restarts in the middle, once it has answered something.
    lula_testkit::eventually("a first answer", Duration::from_secs(60), || async {
        (answers_on_device(&device).await >= 1).then_some(())
    })
    .await;
    stop.cancel();
    server.await.unwrap();
    for n in 3..5u64 {
        requests.push((send(n).await, n));
    }
    let stop = CancellationToken::new();
    let server = serve(stop.clone());

    let _ = lula_testkit::eventually(
        "five answers in the hub",
        Duration::from_secs(60),
        || async {
            let answers: Vec<_> = cloud
                .in_entries()
                .await
                .into_iter()
                .filter(|e| rpc::answers(e).is_some())
                .collect();
            (answers.len() >= 5).then_some(answers)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answers: Vec<_> = cloud
        .in_entries()
        .await
        .into_iter()
        .filter(|e| rpc::answers(e).is_some())
        .collect();
    assert_eq!(answers.len(), 5, "each request answered once");
    for ((id, n), answer) in requests.iter().zip(&answers) {
        assert_eq!(rpc::answers(answer), Some(*id));
        assert_eq!(field(answer, "client"), Some(client.as_str().as_bytes()));
        assert_eq!(
            field(answer, "double"),
            Some((2 * n).to_string().as_bytes())
        );
    }
    stop.cancel();
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_service_calls_a_device_and_an_offline_one_times_out() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.start();
    let stop = CancellationToken::new();
    let server = {
        let (url, keys, stop) = (device.redis.url(), device.keys.clone(), stop.clone());
        tokio::spawn(async move {
            lula_client::rpc::serve(
                &url,
                &keys,
                |method, _args| async move { vec![(b"ran".to_vec(), method.into_bytes())] },
                stop,
            )
            .await
            .unwrap();
        })
    };
    wait_for_handler_start(&device).await;
    let client: ClientId = "dev-1".parse().unwrap();
    let mut conn = lula_client::rpc::connect(cloud.redis_url()).await.unwrap();
    let answer = lula_hub::rpc::call(
        &mut conn,
        &cloud.keys.out_stream(&client),
        &cloud.keys.in_stream(),
        &client,
        "reboot",
        &[],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(
        rpc::payload(&answer),
        vec![(b"ran".to_vec(), b"reboot".to_vec())]
    );

    // Offline: a clear timeout, not a hang; the request stays queued for it.
    stop.cancel();
    server.await.unwrap();
    device.stop().await.unwrap();
    let err = lula_hub::rpc::call(
        &mut conn,
        &cloud.keys.out_stream(&client),
        &cloud.keys.in_stream(),
        &client,
        "reboot",
        &[],
        Duration::from_millis(500),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, lula_hub::rpc::CallError::Timeout { .. }),
        "{err}"
    );
}
