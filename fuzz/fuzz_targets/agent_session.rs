//! The host's agent session fed the guest's bytes: yamux's frame decoder,
//! then the stream the host opened and the frame it reads on it. Nothing
//! the guest sends may panic it; a wait is bounded by the request's
//! timeout (here 100 ms).
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt;
use libfuzzer_sys::fuzz_target;
use runvm_protocol::mux::yamux_config;
use runvm_protocol::{recv_async, send_async, AgentError, AgentInfo, Ping, Request, StreamKind};
use tokio::io::AsyncWriteExt;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (host, mut guest) = tokio::io::duplex(64 << 10);
        let mut session = tokio_yamux::Session::new_client(host, yamux_config());
        let mut control = session.control();
        let driver = tokio::spawn(async move { while session.next().await.is_some() {} });
        let bytes = data.to_vec();
        let guest_side = tokio::spawn(async move {
            let _ = guest.write_all(&bytes).await;
            // The guest hangs up after its bytes.
        });
        let exchange = async {
            let mut stream = control.open_stream().await.ok()?;
            send_async(
                &mut stream,
                &StreamKind::Rpc(Box::new(Request::Ping(Ping {}))),
            )
            .await
            .ok()?;
            recv_async::<_, Result<AgentInfo, AgentError>>(&mut stream)
                .await
                .ok()
        };
        let _ = tokio::time::timeout(Duration::from_millis(100), exchange).await;
        driver.abort();
        let _ = guest_side.await;
    });
});
