//! `--listen ADDR`: an HTTP endpoint on leaktrace's own tokio runtime,
//! serving `/metrics` (Prometheus text format) and
//! `/debug/pprof/goroutine[?pid=N]` (the goroutine profile, as Go's
//! net/http/pprof serves it) from each process's latest report.
use std::{convert::Infallible, net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::exports::Latest;

/// Bound before anything is attached, so a taken port fails first.
pub(super) fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!("cannot listen on {addr}: choose a free port with --listen (e.g. 127.0.0.1:9091)")
    })?;
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener)?)
}

/// Serves until leaktrace's runtime ends.
pub(super) fn spawn(listener: TcpListener, latest: Latest) {
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    log::warn!("--listen: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let latest = latest.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let response = respond(&latest, &req);
                    async move { Ok::<_, Infallible>(response) }
                });
                // A client that never finishes its request does not hold a
                // connection for ever.
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

fn respond(latest: &Latest, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            latest.metrics().into(),
        ),
        "/debug/pprof/goroutine" => {
            let query = req.uri().query().unwrap_or_default();
            let param = |name: &str| {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            };
            if param("debug").is_some_and(|d| d != "0") {
                return text(
                    StatusCode::BAD_REQUEST,
                    "only the profile.proto form (debug=0) is served; leaktrace's own report \
                     says the rest\n"
                        .into(),
                );
            }
            let pid = match param("pid").map(str::parse::<u32>) {
                None => None,
                Some(Ok(pid)) => Some(pid),
                Some(Err(_)) => {
                    return text(StatusCode::BAD_REQUEST, "pid=N takes a number\n".into());
                }
            };
            match latest.pprof(pid) {
                Ok(profile) => reply(StatusCode::OK, "application/octet-stream", profile.into()),
                Err(why) if pid.is_some() => text(StatusCode::NOT_FOUND, format!("{why}\n")),
                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "leaktrace serves /metrics and /debug/pprof/goroutine[?pid=N]\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body.into())
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}
