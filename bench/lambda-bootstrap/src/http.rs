//! Answers function-URL requests through `lambda_http`: echoes the method, path, a query
//! parameter, a header and the body, and sets a status, a header and a cookie.
use lambda_http::{Body, Error, Request, RequestExt, Response, run, service_fn};

async fn handler(req: Request) -> Result<Response<Body>, Error> {
    let who = req.query_string_parameters_ref().and_then(|q| q.first("who")).unwrap_or("nobody").to_string();
    let header = req.headers().get("x-test").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = match req.body() {
        Body::Text(t) => t.clone(),
        Body::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        Body::Empty => String::new(),
    };
    let text = format!("{} {} who={who} x-test={header} body={body}", req.method(), req.uri().path());
    Ok(Response::builder()
        .status(202)
        .header("content-type", "text/plain")
        .header("x-adapter", "lambda_http")
        .header("set-cookie", "seen=1; Path=/")
        .body(Body::Text(text))?)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    run(service_fn(handler)).await
}
