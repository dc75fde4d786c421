//! Echoes its event with the Lambda context it was given; fails when asked to.
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

async fn handler(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (payload, ctx) = event.into_parts();
    if payload.get("fail").is_some() {
        return Err("the rust handler was asked to fail".into());
    }
    println!("rust handler got {payload}");
    Ok(json!({"echo": payload, "request_id": ctx.request_id, "arn": ctx.invoked_function_arn, "deadline": ctx.deadline}))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handler)).await
}
