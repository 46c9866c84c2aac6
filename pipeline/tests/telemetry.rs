//! The metrics/health server: readiness flips only after a checkpoint, metrics are Prometheus text.

use std::time::Duration;

use recon_pipeline::telemetry;

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let code = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, buf)
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let addr = telemetry::serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(
        get(addr, "/readyz").await.0,
        503,
        "not ready before the first checkpoint"
    );
    telemetry::records(5, 1, 2);
    telemetry::rejected("not_json");
    telemetry::checkpoint(7, Duration::from_millis(12), 100, 3, 4096, 42);
    telemetry::committed(7, Duration::from_millis(30), 3);
    assert!(telemetry::is_ready());
    assert_eq!(get(addr, "/readyz").await.0, 200);
    let (code, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    for needle in [
        "recon_records_total{outcome=\"accepted\"} 5",
        "recon_rejected_total{reason=\"not_json\"} 1",
        "recon_last_checkpoint_id 7",
        "recon_open_trips 42",
        "recon_seconds_since_last_commit 0",
        "recon_checkpoint_duration_seconds_bucket",
    ] {
        assert!(body.contains(needle), "missing {needle} in:\n{body}");
    }
}
