//! echo-basic's HTTP/2 side (h2c with prior knowledge on `:3001`, ALPN `h2` on `:8443`), with
//! Go's http2 server's header order: the handler's headers sorted and lower-cased, then a
//! sniffed `content-type`, `content-length` (bodies of up to 4096 bytes, its write buffer) and
//! `date`.

use std::{convert::Infallible, sync::Arc, time::SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Request, Response as HyperResponse,
    body::Frame,
    header::{HeaderName, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    go_compat,
    handler::{Answer, EchoRequest, Handler},
    http1::Connection,
};

/// Go's http2 `handlerChunkWriteSize`.
const HANDLER_CHUNK_WRITE_SIZE: usize = 4 << 10;

type Body = BoxBody<Bytes, std::io::Error>;

/// Serves HTTP/2 on a connection whose preface (or ALPN) said so.
pub async fn serve<S>(stream: S, handler: Arc<Handler>, connection: Connection)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = Arc::new(connection);
    let service = service_fn(move |request| {
        let handler = handler.clone();
        let connection = connection.clone();
        async move { Ok::<_, Infallible>(answer(&handler, &connection, request).await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.auto_date_header(false);
    if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
        tracing::trace!(%error, "echo-basic h2 connection ended with an error");
    }
}

async fn answer(
    handler: &Handler,
    connection: &Connection,
    request: Request<hyper::body::Incoming>,
) -> HyperResponse<Body> {
    let (parts, body) = request.into_parts();
    let request_uri = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let mut host = parts.uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut cookies: Vec<Vec<u8>> = Vec::new();
    for (name, value) in &parts.headers {
        let name = go_compat::canonical_header_key(name.as_str().as_bytes());
        match name.as_slice() {
            b"Host" => {
                if host.is_empty() {
                    host = String::from_utf8_lossy(value.as_bytes()).into_owned();
                }
            }
            b"Cookie" => cookies.push(value.as_bytes().to_vec()),
            _ => headers.push((name, value.as_bytes().to_vec())),
        }
    }
    // Go's http2 server joins the cookie fields into one header, as HTTP/1.1 would carry them.
    if !cookies.is_empty() {
        headers.push((b"Cookie".to_vec(), cookies.join(&b"; "[..])));
    }
    // The handler never reads the body; drain it so the stream ends cleanly.
    let _ = body.collect().await;
    let request = EchoRequest {
        method: parts.method.as_str().to_owned(),
        request_uri,
        host,
        proto: "HTTP/2.0",
        headers,
        remote_addr: connection.remote,
        tls: connection.tls.clone(),
    };
    let response = match handler.answer(connection.listener, &request).await {
        Answer::Respond(response) => response,
        // Hijacking is not possible on HTTP/2: the stream is reset.
        Answer::Abort | Answer::WebSocket { .. } => return reset(),
    };
    encode(&request, response)
}

fn encode(request: &EchoRequest, response: super::handler::Response) -> HyperResponse<Body> {
    let code = response.status;
    let body_allowed = go_compat::body_allowed(code);
    let is_head = request.method == "HEAD";
    let mut answer = HyperResponse::new(empty());
    *answer.status_mut() =
        hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = answer.headers_mut();
    for (name, values) in &response.headers {
        let Ok(name) = HeaderName::from_bytes(&name.to_ascii_lowercase()) else {
            continue;
        };
        for value in values {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.append(name.clone(), value);
            }
        }
    }
    if body_allowed && !response.headers.contains_key(b"Content-Type".as_slice()) && !response.body.is_empty()
    {
        headers.append(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    let one_piece = response.body.len() <= HANDLER_CHUNK_WRITE_SIZE;
    if one_piece && body_allowed && (!response.body.is_empty() || !is_head) {
        headers.append(hyper::header::CONTENT_LENGTH, response.body.len().into());
    }
    if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now())) {
        headers.append(hyper::header::DATE, date);
    }
    if is_head || !body_allowed {
        return answer;
    }
    let body = Bytes::from(response.body);
    *answer.body_mut() = if one_piece {
        Full::new(body).map_err(|never| match never {}).boxed()
    } else {
        // No exact size: hyper must not add a content-length Go would not send.
        let frames = futures::stream::iter([Ok::<_, std::io::Error>(Frame::data(body))]);
        BodyExt::boxed(StreamBody::new(frames))
    };
    answer
}

fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|never| match never {}).boxed()
}

/// A response whose body fails at once: hyper resets the stream.
fn reset() -> HyperResponse<Body> {
    let frames = futures::stream::iter([Err::<Frame<Bytes>, _>(std::io::Error::other("stream reset"))]);
    HyperResponse::new(BodyExt::boxed(StreamBody::new(frames)))
}
