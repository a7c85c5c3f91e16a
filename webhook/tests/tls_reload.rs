//! Certificate rotation on disk, the way Kubernetes updates a Secret volume (a `..data`
//! symlink swap): new handshakes get the new certificate with no restart, and a
//! keep-alive connection opened before the rotation keeps working.

mod common;

use std::time::Duration;

use common::{Options, fixture, start, write_symlinked};

async fn peer_cert(client: &reqwest::Client, url: &str, body: &serde_json::Value) -> Vec<u8> {
    let resp = client.post(url).json(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let der = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .unwrap()
        .to_vec();
    let _ = resp.bytes().await.unwrap();
    der
}

#[tokio::test]
async fn rotated_certificate_is_served_to_new_handshakes_without_dropping_old_connections() {
    let server = start(Options {
        symlinked: true,
        ..Options::default()
    })
    .await;
    // A long recheck: only the directory watch can make this test pass in time.
    let _watch = server.cert.watch(Duration::from_secs(3600)).unwrap();
    let body: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture()).unwrap()).unwrap();
    let url = server.url();

    let kept_alive = server.client();
    let first = peer_cert(&kept_alive, &url, &body).await;

    let second_der = write_symlinked(&server.ca, &server.cert_dir, 2);
    assert_ne!(first, second_der);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.cert.reload_count() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "certificate not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A new connection presents the new certificate.
    let fresh = server.client();
    assert_eq!(peer_cert(&fresh, &url, &body).await, second_der);
    // The pooled connection from before the rotation still serves requests, on the
    // session it negotiated with the old certificate.
    assert_eq!(peer_cert(&kept_alive, &url, &body).await, first);
    // Exactly two connections: the kept-alive one was reused, not re-opened.
    assert_eq!(server.handle.connection_count(), 2);
    drop(fresh);

    // A broken rotation (key does not match) keeps the last good certificate.
    let third = server.cert_dir.join("..2026_11_22_3");
    std::fs::create_dir_all(&third).unwrap();
    std::fs::copy(
        server.cert_dir.join("..2026_11_22_1/tls.crt"),
        third.join("tls.crt"),
    )
    .unwrap();
    std::fs::copy(
        server.cert_dir.join("..2026_11_22_2/tls.key"),
        third.join("tls.key"),
    )
    .unwrap();
    let tmp = server.cert_dir.join("..data_tmp");
    std::os::unix::fs::symlink("..2026_11_22_3", &tmp).unwrap();
    std::fs::rename(&tmp, server.cert_dir.join("..data")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.cert.failure_count() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "broken certificate not noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(peer_cert(&server.client(), &url, &body).await, second_der);
}
