//! Ethernet frames on a stream socket, each after its length as a 4-byte big-endian number:
//! what QEMU's `-netdev stream`, passt and libkrun's `krun_add_net_unixstream` speak.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::MAX_FRAME;

/// A framing error on the VMM's socket.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    /// The socket failed.
    #[error("the VMM's network socket: {0}")]
    Io(#[from] std::io::Error),
    /// A length no Ethernet frame has.
    #[error("the VMM sent a {0}-byte frame (at most {MAX_FRAME} expected)")]
    TooLong(usize),
}

/// Reads one frame; `None` at a clean end of stream (the VMM is gone).
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Vec<u8>>, FramingError> {
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let length = u32::from_be_bytes(length) as usize;
    // A little slack: some VMMs count a 4-byte VLAN tag or FCS.
    if length > MAX_FRAME + 8 {
        return Err(FramingError::TooLong(length));
    }
    let mut frame = vec![0; length];
    reader.read_exact(&mut frame).await?;
    Ok(Some(frame))
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &[u8],
) -> Result<(), FramingError> {
    let length = u32::try_from(frame.len()).map_err(|_| FramingError::TooLong(frame.len()))?;
    let mut buffer = Vec::with_capacity(frame.len() + 4);
    buffer.extend_from_slice(&length.to_be_bytes());
    buffer.extend_from_slice(frame);
    writer.write_all(&buffer).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, &[1, 2, 3]).await.expect("write");
        write_frame(&mut a, &[]).await.expect("write");
        assert_eq!(read_frame(&mut b).await.expect("read"), Some(vec![1, 2, 3]));
        assert_eq!(read_frame(&mut b).await.expect("read"), Some(vec![]));
        a.write_all(&100_000u32.to_be_bytes()).await.expect("write");
        assert!(matches!(
            read_frame(&mut b).await,
            Err(FramingError::TooLong(100_000))
        ));
        drop(a);
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        assert_eq!(read_frame(&mut b).await.expect("eof"), None);
    }
}
