//! `/ws` after the handshake: golang.org/x/net/websocket's server connection under
//! `io.Copy(ws, ws)`. Every data frame's payload comes back as a text frame (its default payload
//! type), pings are answered, a close frame ends the connection without a close frame back, and
//! an unmasked client frame gets a protocol-error close.

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// io.Copy's buffer: a larger payload is read, and echoed, in pieces of this size.
const COPY_BUFFER: usize = 32 * 1024;

/// `Sec-WebSocket-Accept` for a client's key.
pub fn accept_key(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Echoes frames until the client closes or breaks the protocol.
pub async fn echo<S>(mut stream: S, mut buffered: Vec<u8>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let Some(frame) = read_frame(&mut stream, &mut buffered).await else {
            return;
        };
        if frame.mask.is_none() {
            let _ = stream.write_all(&encode_frame(0x8, &1002u16.to_be_bytes())).await;
            return;
        }
        match frame.opcode {
            0x0..=0x2 => {
                for piece in frame.payload.chunks(COPY_BUFFER) {
                    if stream.write_all(&encode_frame(0x1, piece)).await.is_err() {
                        return;
                    }
                }
            }
            0x8 => return,
            0x9 => {
                let payload = &frame.payload[..frame.payload.len().min(125)];
                if stream.write_all(&encode_frame(0xA, payload)).await.is_err() {
                    return;
                }
            }
            _ => {}
        }
    }
}

struct Frame {
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: Vec<u8>,
}

async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S, buffered: &mut Vec<u8>) -> Option<Frame> {
    fill(stream, buffered, 2).await?;
    let opcode = buffered[0] & 0x0f;
    let masked = buffered[1] & 0x80 != 0;
    let (length, mut at) = match buffered[1] & 0x7f {
        126 => {
            fill(stream, buffered, 4).await?;
            (u64::from(u16::from_be_bytes([buffered[2], buffered[3]])), 4)
        }
        127 => {
            fill(stream, buffered, 10).await?;
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&buffered[2..10]);
            (u64::from_be_bytes(bytes), 10)
        }
        short => (u64::from(short), 2),
    };
    // x/net/websocket's default MaxPayloadBytes.
    let length = usize::try_from(length).ok().filter(|&l| l <= 32 << 20)?;
    let mask = if masked {
        fill(stream, buffered, at + 4).await?;
        let mut key = [0u8; 4];
        key.copy_from_slice(&buffered[at..at + 4]);
        at += 4;
        Some(key)
    } else {
        None
    };
    fill(stream, buffered, at + length).await?;
    let mut payload: Vec<u8> = buffered.drain(..at + length).skip(at).collect();
    if let Some(key) = mask {
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= key[i % 4];
        }
    }
    Some(Frame {
        opcode,
        mask,
        payload,
    })
}

async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buffered: &mut Vec<u8>, want: usize) -> Option<()> {
    while buffered.len() < want {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffered.extend_from_slice(&chunk[..n]),
        }
    }
    Some(())
}

/// A final, unmasked server frame.
pub fn encode_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
