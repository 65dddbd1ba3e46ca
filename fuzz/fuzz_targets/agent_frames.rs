//! What the host decodes from the guest agent, frame by frame: a length
//! prefix, then JSON of one of the replies; then the checks the host makes
//! on what decoded (exit statuses, error messages).
#![no_main]

use libfuzzer_sys::fuzz_target;
use runvm_protocol::{
    recv, AgentError, AgentInfo, CgroupStats, Created, ExitStatus, GuestProcess, MAX_FRAME_LEN,
};
use serde::de::DeserializeOwned;

fn decode<T: DeserializeOwned>(data: &[u8]) -> Option<Result<T, AgentError>> {
    let mut reader = data;
    let got = recv::<_, Result<T, AgentError>>(&mut reader).ok()?;
    // A frame that decoded was no longer than the limit.
    assert!(data.len() - reader.len() <= MAX_FRAME_LEN + 4);
    Some(got)
}

fuzz_target!(|data: &[u8]| {
    match decode::<ExitStatus>(data) {
        Some(Ok(status)) if status.is_possible() => {
            assert!((0..=128 + 64).contains(&status.code()));
        }
        Some(Err(e)) => {
            let cut = e.bounded();
            assert!(cut.message.len() <= AgentError::MAX_MESSAGE + 3);
        }
        _ => {}
    }
    let _ = decode::<AgentInfo>(data);
    let _ = decode::<Created>(data);
    let _ = decode::<CgroupStats>(data);
    let _ = decode::<Vec<GuestProcess>>(data);
    let _ = decode::<()>(data);
});
