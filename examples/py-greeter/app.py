"""A Python Lambda handler behind a function URL: GET /?name=Ada -> a greeting."""
import json
import os


def handler(event, context):
    query = event.get("queryStringParameters") or {}
    name = query.get("name", "world")
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({
            "message": f"{os.environ.get('GREETING', 'Hello')}, {name}!",
            "request_id": context.aws_request_id,
            "runtime": "python3",
        }),
    }
