//! Status codes for failures tonic produces before our handlers run, made to follow the
//! contract: a body that does not decode as the RPC's message is the caller's bad input
//! (INVALID_ARGUMENT, tonic says INTERNAL), and a message over the size limit is a limit hit
//! (RESOURCE_EXHAUSTED, as gRPC's own status-code guide says; tonic says OUT_OF_RANGE).
use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use http_body::{Body, Frame, SizeHint};
use tonic::Status;

const INTERNAL: &str = "13";
const OUT_OF_RANGE: &str = "11";

/// Rewrites such a status, whether it travels in the response headers (trailers-only) or in
/// the trailers after the body; anything else passes untouched.
pub fn normalise(mut res: Response<tonic::body::Body>) -> Response<tonic::body::Body> {
    rewrite(res.headers_mut());
    res.map(|inner| tonic::body::Body::new(NormalisedBody { inner }))
}

struct NormalisedBody {
    inner: tonic::body::Body,
}

impl Body for NormalisedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx).map(|frame| {
            frame.map(|f| {
                f.map(|frame| match frame.into_trailers() {
                    Ok(mut trailers) => {
                        rewrite(&mut trailers);
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn rewrite(headers: &mut HeaderMap) {
    let code = headers.get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let message = headers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let replacement = match code {
        INTERNAL if message.contains("decode") => {
            Some(("3", "the request body is not a valid protobuf message for this RPC"))
        }
        OUT_OF_RANGE if message.contains("length%20too%20large") || message.contains("length too large") => {
            Some(("8", "the request message is larger than the server's max_message_bytes"))
        }
        _ => None,
    };
    if let Some((code, text)) = replacement {
        headers.insert("grpc-status", HeaderValue::from_static(code));
        let encoded = text.replace(' ', "%20");
        headers.insert("grpc-message", HeaderValue::from_str(&encoded).expect("ASCII message"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(code: &'static str, message: &'static str) -> HeaderMap {
        let mut r = HeaderMap::new();
        r.insert("grpc-status", HeaderValue::from_static(code));
        r.insert("grpc-message", HeaderValue::from_static(message));
        r
    }

    fn normalise(mut h: HeaderMap) -> HeaderMap {
        rewrite(&mut h);
        h
    }

    #[test]
    fn decode_failures_become_invalid_argument() {
        let r = normalise(response("13", "failed%20to%20decode%20Protobuf%20message"));
        assert_eq!(r["grpc-status"], "3");
    }

    #[test]
    fn oversized_messages_become_resource_exhausted() {
        let r = normalise(response("11", "Error,%20decoded%20message%20length%20too%20large"));
        assert_eq!(r["grpc-status"], "8");
    }

    #[test]
    fn other_statuses_pass_untouched() {
        let r = normalise(response("13", "internal%20error"));
        assert_eq!(r["grpc-status"], "13");
        let r = normalise(response("5", "no%20request"));
        assert_eq!(r["grpc-status"], "5");
    }
}
