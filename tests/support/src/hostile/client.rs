//! The client side of a case: raw bytes to a proxy, and the answers read back.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::recorder::RECORDED_HEADER;

/// One answer the client read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// `x-recorded`: set when the answer came from the recording backend.
    pub recorded: Option<String>,
    /// `x-microgate-reason`, if any.
    pub reason: Option<String>,
}

/// What came back on one client connection.
#[derive(Clone, Debug, Default)]
pub struct Conversation {
    pub answers: Vec<Answer>,
    /// Whether the proxy closed the connection.
    pub closed: bool,
    /// Bytes after the last whole answer that do not make one.
    pub garbage: Vec<u8>,
    pub raw: Vec<u8>,
}

/// Sends `bytes` to `addr` in one write and reads answers until the proxy closes, `done` says
/// enough came, or nothing arrives for `silence`.
pub async fn converse(
    addr: SocketAddr,
    bytes: &[u8],
    silence: Duration,
    done: impl Fn(&[Answer]) -> bool,
) -> std::io::Result<Conversation> {
    let mut stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.split();
    let mut conversation = Conversation::default();
    let mut chunk = vec![0u8; 64 * 1024];
    let write = async {
        // A proxy may close before it has read everything: that is an answer, not an error.
        let _ = writer.write_all(bytes).await;
        std::future::pending::<()>().await;
    };
    tokio::pin!(write);
    loop {
        let read = tokio::select! {
            read = tokio::time::timeout(silence, reader.read(&mut chunk)) => read,
            () = &mut write => unreachable!("the write future never completes"),
        };
        match read {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => {
                conversation.closed = true;
                break;
            }
            Ok(Ok(n)) => {
                conversation.raw.extend_from_slice(&chunk[..n]);
                let (answers, rest) = read_answers(&conversation.raw);
                conversation.answers = answers;
                conversation.garbage = rest.to_vec();
                if done(&conversation.answers) {
                    break;
                }
            }
        }
    }
    let (answers, rest) = read_answers(&conversation.raw);
    conversation.answers = answers;
    conversation.garbage = rest.to_vec();
    Ok(conversation)
}

/// The whole answers at the front of `raw` (interim ones left out), and what follows them.
pub fn read_answers(raw: &[u8]) -> (Vec<Answer>, &[u8]) {
    let mut answers = Vec::new();
    let mut at = 0;
    while let Some((answer, len)) = read_answer(&raw[at..]) {
        at += len;
        if !(100..200).contains(&answer.status) {
            answers.push(answer);
        }
    }
    (answers, &raw[at..])
}

fn read_answer(raw: &[u8]) -> Option<(Answer, usize)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    if !status_line.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let mut answer = Answer {
        status,
        recorded: None,
        reason: None,
    };
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "x-microgate-reason" => answer.reason = Some(value.to_owned()),
            name if name == RECORDED_HEADER => answer.recorded = Some(value.to_owned()),
            _ => {}
        }
    }
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Some((answer, end));
    }
    if chunked {
        let mut at = end;
        loop {
            let line_end = raw[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size_text = std::str::from_utf8(&raw[at..line_end]).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let line_end = raw[at..].windows(2).position(|w| w == b"\r\n")? + at;
                    let empty = line_end == at;
                    at = line_end + 2;
                    if empty {
                        return Some((answer, at));
                    }
                }
            }
            if raw.len() < at + size + 2 {
                return None;
            }
            at += size + 2;
        }
    }
    match length {
        Some(n) if raw.len() >= end + n => Some((answer, end + n)),
        Some(_) => None,
        // Delimited by the close: whole only once the connection is gone, which the caller
        // sees as bytes left over.
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_in_every_framing() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-recorded: 1 /\r\n\r\nokHTTP/1.1 400 Bad\r\ntransfer-encoding: chunked\r\nx-microgate-reason: r\r\n\r\n2\r\nab\r\n0\r\n\r\nHTTP/1.1 200";
        let (answers, rest) = read_answers(raw);
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[0].recorded.as_deref(), Some("1 /"));
        assert_eq!(
            (answers[1].status, answers[1].reason.as_deref()),
            (400, Some("r"))
        );
        assert_eq!(rest, b"HTTP/1.1 200");
    }
}
