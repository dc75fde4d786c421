//! The one body type that crosses the runtime seam, both for requests and responses.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

/// Boxed error of a body stream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming HTTP body.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body into a [`Body`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A body with no bytes.
pub fn empty() -> Body {
    boxed(Empty::<Bytes>::new().map_err(|never| match never {}))
}

/// A body of the given bytes.
pub fn full(bytes: Bytes) -> Body {
    boxed(Full::new(bytes).map_err(|never| match never {}))
}
