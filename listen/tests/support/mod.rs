//! A listener serving `200 ok` on loopback, and raw clients.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use wva_listen::{Limits, Listener};

/// Starts a listener on 127.0.0.1 answering every request with `ok`.
pub async fn serve(limits: Limits) -> (SocketAddr, Arc<Listener>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = Arc::new(Listener::new(tcp, limits, "test"));
    let addr = listener.local_addr().unwrap();
    let serving = Arc::clone(&listener);
    tokio::spawn(async move {
        loop {
            let connection = serving.accept().await;
            let builder = serving.limits().http1();
            tokio::spawn(async move {
                let service = service_fn(|_| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
                });
                let _ = builder
                    .serve_connection(TokioIo::new(connection), service)
                    .await;
            });
        }
    });
    (addr, listener)
}

/// A connection to `addr` from the loopback address `from`.
pub async fn connect_from(from: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Sends one GET and reads the whole response (the request closes the
/// connection); empty when the server closed it first.
pub async fn get(stream: &mut TcpStream) -> String {
    let request = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return String::new();
    }
    read_to_end(stream).await
}

/// Everything the server sends until it closes the connection.
pub async fn read_to_end(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}
