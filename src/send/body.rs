//! Reading a response body with a size cap, and telling a body that never
//! fully arrived from an empty one.

use bytes::{Bytes, BytesMut};

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Longer than the connector's `max_response_bytes`; reading stopped there.
    TooLarge {
        /// The cap, in bytes.
        cap: u64,
    },
    /// The connection failed or timed out while the body was arriving.
    Read(reqwest::Error),
}

/// Reads `response`'s body, but never more than `cap` bytes: a declared
/// `Content-Length` over the cap fails before reading, and a body that grows
/// past it fails as soon as it does.
pub async fn read_capped(mut response: reqwest::Response, cap: u64) -> Result<Bytes, BodyError> {
    if response.content_length().is_some_and(|length| length > cap) {
        return Err(BodyError::TooLarge { cap });
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Read)? {
        if (body.len() + chunk.len()) as u64 > cap {
            return Err(BodyError::TooLarge { cap });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
