// Hangar's Node.js runtime for Lambda handlers: a Lambda Runtime API client (no dependencies).
//
// Reads AWS_LAMBDA_RUNTIME_API, _HANDLER (file.function) and LAMBDA_TASK_ROOT, loads the
// handler once (CommonJS or ES module), then loops: next invocation -> handler(event, context)
// (async, promise or callback style) -> response or error.
"use strict";
const http = require("node:http");
const path = require("node:path");
const fs = require("node:fs");
const { pathToFileURL } = require("node:url");

const [host, port] = splitAddress(process.env.AWS_LAMBDA_RUNTIME_API || "");
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const PREFIX = "/2018-06-01/runtime";
const MAX_RESPONSE = 6 * 1024 * 1024;

function splitAddress(a) {
  const i = a.lastIndexOf(":");
  return [a.slice(0, i), Number(a.slice(i + 1))];
}

function request(method, p, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port, method, path: PREFIX + p, agent, headers }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on("error", reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

function errorBody(errorType, message, stack) {
  return JSON.stringify({ errorMessage: message, errorType, stackTrace: stack ? String(stack).split("\n").slice(1).map((l) => l.trim()) : [] });
}

function post(p, body, errorType) {
  const headers = { "Content-Type": "application/json" };
  if (errorType) headers["Lambda-Runtime-Function-Error-Type"] = errorType;
  return request("POST", p, body, headers);
}

class HandlerError extends Error {
  constructor(type, message) {
    super(message);
    this.type = type;
  }
}

async function loadHandler(spec, root) {
  const dot = spec.lastIndexOf(".");
  if (dot <= 0 || dot === spec.length - 1) throw new HandlerError("Runtime.MalformedHandlerName", `Bad handler '${spec}': use file.function, e.g. index.handler`);
  const file = spec.slice(0, dot);
  const name = spec.slice(dot + 1);
  const base = path.resolve(root, file);
  const candidates = [".js", ".mjs", ".cjs"].map((e) => base + e).filter((p) => fs.existsSync(p));
  if (candidates.length === 0) throw new HandlerError("Runtime.ImportModuleError", `Error: Cannot find module '${file}' in ${root}`);
  let mod;
  try {
    mod = candidates[0].endsWith(".mjs") ? await import(pathToFileURL(candidates[0]).href) : require(candidates[0]);
  } catch (e) {
    if (e && e.code === "ERR_REQUIRE_ESM") mod = await import(pathToFileURL(candidates[0]).href);
    else if (e instanceof SyntaxError) throw new HandlerError("Runtime.UserCodeSyntaxError", `${e.name}: ${e.message}`);
    else throw new HandlerError("Runtime.ImportModuleError", `${e && e.name}: ${e && e.message}`);
  }
  const fn = mod[name] ?? (mod.default && mod.default[name]);
  if (typeof fn !== "function") throw new HandlerError("Runtime.HandlerNotFound", `${file}.${name} is undefined or not exported`);
  return fn;
}

function makeContext(h) {
  const deadline = Number(h["lambda-runtime-deadline-ms"] || 0);
  const parse = (t) => { try { return t ? JSON.parse(t) : undefined; } catch { return undefined; } };
  if (h["lambda-runtime-trace-id"]) process.env._X_AMZN_TRACE_ID = h["lambda-runtime-trace-id"];
  return {
    awsRequestId: h["lambda-runtime-aws-request-id"],
    invokedFunctionArn: h["lambda-runtime-invoked-function-arn"],
    functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION || "$LATEST",
    memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    logGroupName: process.env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
    identity: parse(h["lambda-runtime-cognito-identity"]),
    clientContext: parse(h["lambda-runtime-client-context"]),
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
  };
}

function run(handler, event, context) {
  return new Promise((resolve, reject) => {
    let settled = false;
    const done = (err, value) => {
      if (settled) return;
      settled = true;
      err ? reject(err) : resolve(value);
    };
    try {
      const out = handler(event, context, done);
      if (out && typeof out.then === "function") out.then((v) => done(null, v), (e) => done(e));
      else if (handler.length < 3) done(null, out);
    } catch (e) {
      done(e);
    }
  });
}

async function main() {
  let handler;
  try {
    handler = await loadHandler(process.env._HANDLER || "", process.env.LAMBDA_TASK_ROOT || process.cwd());
  } catch (e) {
    const type = e instanceof HandlerError ? e.type : "Runtime.ImportModuleError";
    console.error(`[ERROR] ${type}: ${e.message}`);
    await post("/init/error", errorBody(type, e.message), type);
    process.exit(1);
  }
  for (;;) {
    const next = await request("GET", "/invocation/next");
    if (next.status !== 200) process.exit(0);
    const id = next.headers["lambda-runtime-aws-request-id"];
    let result;
    try {
      const event = next.body.length ? JSON.parse(next.body.toString("utf8")) : null;
      result = await run(handler, event, makeContext(next.headers));
    } catch (e) {
      const err = e instanceof Error ? e : new Error(String(e));
      console.error(err.stack || String(err));
      await post(`/invocation/${id}/error`, errorBody(err.name || "Error", err.message, err.stack), "Unhandled");
      continue;
    }
    let payload;
    try {
      payload = JSON.stringify(result === undefined ? null : result);
    } catch (e) {
      await post(`/invocation/${id}/error`, errorBody("Runtime.MarshalError", `Unable to stringify response body: ${e.message}`), "Runtime.MarshalError");
      continue;
    }
    if (Buffer.byteLength(payload) > MAX_RESPONSE) {
      const msg = `Response payload size (${Buffer.byteLength(payload)} bytes) exceeded maximum allowed payload size (${MAX_RESPONSE} bytes).`;
      await post(`/invocation/${id}/error`, errorBody("Function.ResponseSizeTooLarge", msg), "Function.ResponseSizeTooLarge");
      continue;
    }
    await post(`/invocation/${id}/response`, payload);
  }
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
