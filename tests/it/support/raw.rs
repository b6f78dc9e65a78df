//! Raw HTTP/2 to the server under test: gRPC requests with bodies and settings that the
//! generated clients never send, for the hostile-client tests.

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;

/// An HTTP/2 connection driven by the test, with its connection task running.
pub async fn connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    over(tcp).await
}

/// An HTTP/2 connection over `io` (e.g. a TLS stream), with its connection task running.
pub async fn over<IO>(io: IO) -> h2::client::SendRequest<Bytes>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = h2::client::handshake(io).await.expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

/// One gRPC frame: the compressed flag, the length, the bytes as given.
pub fn grpc_frame(compressed: bool, message: &[u8]) -> Bytes {
    let mut frame = vec![u8::from(compressed)];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(message);
    frame.into()
}

/// A unary call of `path` with `body` as the whole request body; the answer's
/// `grpc-status` and `grpc-message` (from the headers or the trailers). Bounded by 5 s.
pub async fn unary(
    send: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    body: Bytes,
) -> (i32, String) {
    let request = http::Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let call = async {
        let mut ready = send.clone().ready().await.expect("ready");
        let (response, mut stream) = ready.send_request(request, false).expect("send");
        stream.send_data(body, true).expect("body");
        let response = response.await.expect("response");
        let (parts, mut body) = response.into_parts();
        let mut headers = parts.headers;
        if !headers.contains_key("grpc-status") {
            while let Some(chunk) = body.data().await {
                let chunk = chunk.expect("data");
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            if let Some(trailers) = body.trailers().await.expect("trailers") {
                headers.extend(trailers);
            }
        }
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        (
            text("grpc-status").parse().expect("a grpc-status"),
            percent_decoded(&text("grpc-message")),
        )
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("answered within 5 s")
}

/// A `grpc-message` as written, its percent-encoding undone.
fn percent_decoded(text: &str) -> String {
    let mut bytes = Vec::new();
    let mut rest = text.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        match (first, tail) {
            (b'%', [high, low, after @ ..]) => {
                let hex = std::str::from_utf8(&[*high, *low])
                    .expect("ascii")
                    .to_owned();
                bytes.push(u8::from_str_radix(&hex, 16).expect("percent-encoded"));
                rest = after;
            }
            _ => {
                bytes.push(first);
                rest = tail;
            }
        }
    }
    String::from_utf8(bytes).expect("UTF-8")
}

/// Whether the server closes `stream` (end of stream or an error) within `within`, reading
/// and discarding whatever it sends first (its SETTINGS).
pub async fn closed_within<S>(stream: &mut S, within: Duration) -> bool
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let drained = async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, drained).await.is_ok()
}
