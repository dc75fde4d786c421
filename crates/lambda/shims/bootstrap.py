"""Hangar's Python runtime for Lambda handlers: a Lambda Runtime API client (stdlib only).

Reads AWS_LAMBDA_RUNTIME_API, _HANDLER (module.function) and LAMBDA_TASK_ROOT, imports the
handler once, then loops: next invocation -> handler(event, context) -> response or error.
"""
import http.client
import importlib
import json
import os
import sys
import time
import traceback

API_PREFIX = "/2018-06-01/runtime"


class RuntimeClient:
    def __init__(self, address):
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        self.conn = None

    def request(self, method, path, body=None, headers=None):
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port)
            try:
                self.conn.request(method, API_PREFIX + path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                return resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), resp.read()
            except (ConnectionError, http.client.HTTPException):
                self.conn = None
                if attempt:
                    raise

    def next(self):
        status, headers, body = self.request("GET", "/invocation/next")
        if status != 200:
            sys.exit(0)  # the platform stopped this instance
        return headers, body

    def post(self, path, payload, error_type=None):
        headers = {"Content-Type": "application/json"}
        if error_type:
            headers["Lambda-Runtime-Function-Error-Type"] = error_type
        return self.request("POST", path, body=payload, headers=headers)[0]


def error_body(error_type, message, tb=None):
    return json.dumps({
        "errorMessage": message,
        "errorType": error_type,
        "stackTrace": traceback.format_list(traceback.extract_tb(tb)) if tb else [],
    }).encode()


class Context:
    """What Lambda passes as `context`."""

    def __init__(self, headers):
        self.aws_request_id = headers.get("lambda-runtime-aws-request-id", "")
        self.invoked_function_arn = headers.get("lambda-runtime-invoked-function-arn", "")
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self._deadline_ms = int(headers.get("lambda-runtime-deadline-ms", "0"))
        self.identity = _json_or_none(headers.get("lambda-runtime-cognito-identity"))
        self.client_context = _json_or_none(headers.get("lambda-runtime-client-context"))
        trace = headers.get("lambda-runtime-trace-id")
        if trace:
            os.environ["_X_AMZN_TRACE_ID"] = trace

    def get_remaining_time_in_millis(self):
        return max(0, self._deadline_ms - int(time.time() * 1000))


def _json_or_none(text):
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


class HandlerLoadError(Exception):
    """The handler could not be loaded: args are (Lambda error type, message)."""


def load_handler(spec, task_root):
    sys.path.insert(0, task_root)
    module_name, _, function_name = spec.rpartition(".")
    if not module_name or not function_name:
        raise HandlerLoadError("Runtime.MalformedHandlerName", f"Bad handler '{spec}': use module.function, e.g. app.handler")
    try:
        module = importlib.import_module(module_name.replace("/", "."))
    except ImportError as e:
        raise HandlerLoadError("Runtime.ImportModuleError", f"Unable to import module '{module_name}': {e}")
    except SyntaxError as e:
        raise HandlerLoadError("Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {e}")
    handler = getattr(module, function_name, None)
    if not callable(handler):
        raise HandlerLoadError("Runtime.HandlerNotFound", f"Handler '{function_name}' missing on module '{module_name}'")
    return handler


def serve(client, handler):
    """Answers invocations forever: next -> handler(event, context) -> response or error."""
    while True:
        headers, body = client.next()
        request_id = headers.get("lambda-runtime-aws-request-id", "")
        try:
            event = json.loads(body) if body else None
            result = handler(event, Context(headers))
        except Exception as e:
            traceback.print_exc()
            sys.stderr.flush()
            client.post(f"/invocation/{request_id}/error", error_body(type(e).__name__, str(e), e.__traceback__), "Unhandled")
            continue
        finally:
            sys.stdout.flush()
        try:
            payload = json.dumps(result).encode()
        except (TypeError, ValueError) as e:
            client.post(f"/invocation/{request_id}/error", error_body("Runtime.MarshalError", f"Unable to marshal response: {e}"), "Runtime.MarshalError")
            continue
        if client.post(f"/invocation/{request_id}/response", payload) == 413:
            message = f"Response payload size ({len(payload)} bytes) exceeded maximum allowed payload size (6291456 bytes)."
            client.post(f"/invocation/{request_id}/error", error_body("Function.ResponseSizeTooLarge", message), "Function.ResponseSizeTooLarge")


def main():
    client = RuntimeClient(os.environ["AWS_LAMBDA_RUNTIME_API"])
    try:
        handler = load_handler(os.environ.get("_HANDLER", ""), os.environ.get("LAMBDA_TASK_ROOT", os.getcwd()))
    except HandlerLoadError as e:
        error_type, message = e.args
        print(f"[ERROR] {error_type}: {message}", file=sys.stderr, flush=True)
        client.post("/init/error", error_body(error_type, message), error_type)
        sys.exit(1)
    except Exception as e:  # the module raised while being imported
        traceback.print_exc()
        client.post("/init/error", error_body("Runtime.ImportModuleError", f"{type(e).__name__}: {e}", e.__traceback__), "Runtime.ImportModuleError")
        sys.exit(1)

    serve(client, handler)


if __name__ == "__main__":
    main()
