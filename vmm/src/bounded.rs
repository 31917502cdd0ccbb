//! A sink that keeps at most a set number of bytes: for what a guest sends that the host
//! keeps in memory (a file an MCP tool returns, the guest's /proc/meminfo), so a guest cannot
//! make the host hold more than it asked for.

use std::pin::Pin;
use std::task::{Context, Poll};

/// Keeps written bytes up to `limit`; a write past it fails (and the transfer with it).
#[derive(Debug)]
pub struct BoundedSink {
    bytes: Vec<u8>,
    limit: usize,
}

impl BoundedSink {
    /// An empty sink that takes at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            bytes: Vec::new(),
            limit,
        }
    }

    /// What was written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

impl tokio::io::AsyncWrite for BoundedSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.bytes.len() + data.len() > self.limit {
            let limit = self.limit;
            return Poll::Ready(Err(std::io::Error::other(format!(
                "more than {limit} bytes"
            ))));
        }
        self.bytes.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn it_refuses_what_is_past_its_limit() {
        let mut sink = BoundedSink::new(5);
        sink.write_all(b"abc").await.unwrap();
        assert!(sink.write_all(b"def").await.is_err());
        sink.write_all(b"de").await.unwrap();
        assert_eq!(sink.into_bytes(), b"abcde");
    }
}
