//! Length-prefixed frames: a 4-byte big-endian length, then the payload.

use std::io::{self, Read, Write};

/// Largest payload accepted; a longer length prefix means a corrupt stream.
pub const MAX_FRAME_LEN: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("read frame")]
    Read(#[source] io::Error),
    #[error("write frame")]
    Write(#[source] io::Error),
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    TooLong { len: usize },
    #[error("encode frame")]
    Encode(#[source] serde_json::Error),
    #[error("decode frame")]
    Decode(#[source] serde_json::Error),
}

impl FrameError {
    /// True when the stream simply ended (the peer closed or went away).
    pub fn is_disconnect(&self) -> bool {
        match self {
            FrameError::Read(e) | FrameError::Write(e) => crate::is_disconnect(e),
            _ => false,
        }
    }
}

fn check_len(len: usize) -> Result<(), FrameError> {
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong { len });
    }
    Ok(())
}

pub fn write_frame<W: Write>(w: &mut W, payload: &[u8]) -> Result<(), FrameError> {
    check_len(payload.len())?;
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf).map_err(FrameError::Write)?;
    w.flush().map_err(FrameError::Write)
}

pub fn read_frame<R: Read>(r: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(FrameError::Read)?;
    let len = u32::from_be_bytes(len) as usize;
    check_len(len)?;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).map_err(FrameError::Read)?;
    Ok(buf)
}

#[cfg(feature = "tokio")]
pub async fn write_frame_async<W>(w: &mut W, payload: &[u8]) -> Result<(), FrameError>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    check_len(payload.len())?;
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf).await.map_err(FrameError::Write)?;
    w.flush().await.map_err(FrameError::Write)
}

#[cfg(feature = "tokio")]
pub async fn read_frame_async<R>(r: &mut R) -> Result<Vec<u8>, FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.map_err(FrameError::Read)?;
    let len = u32::from_be_bytes(len) as usize;
    check_len(len)?;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.map_err(FrameError::Read)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_oversized_length_prefix() {
        let bytes = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        let err = read_frame(&mut &bytes[..]).unwrap_err();
        assert!(matches!(err, FrameError::TooLong { .. }));
    }

    #[test]
    fn truncated_frame_is_a_disconnect() {
        let mut bytes = 10u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        let err = read_frame(&mut bytes.as_slice()).unwrap_err();
        assert!(err.is_disconnect());
    }
}
