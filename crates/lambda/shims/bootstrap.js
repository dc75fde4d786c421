// Hangar's Node.js runtime for Lambda handlers: a Lambda Runtime API client (no dependencies).
//
// Reads AWS_LAMBDA_RUNTIME_API, _HANDLER (file.function) and LAMBDA_TASK_ROOT, loads the
// handler once (CommonJS or ES module), then loops: next invocation -> handler(event, context)
// (async, promise or callback style) -> response or error.
"use strict";
const http = require("node:http");
const https = require("node:https");
const net = require("node:net");
const tls = require("node:tls");
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

// Node (before 24) ignores HTTP(S)_PROXY, and outbound access from a Hangar instance only goes
// through the proxy those name: route http, https and fetch through it with CONNECT tunnels,
// so handlers reach what the function was granted with the built-in clients.
function useProxyFromEnv() {
  const raw = process.env.HTTPS_PROXY || process.env.https_proxy || process.env.HTTP_PROXY || process.env.http_proxy;
  if (!raw) return;
  const proxy = new URL(raw);
  const proxyPort = Number(proxy.port) || 80;
  const noProxy = (process.env.NO_PROXY || process.env.no_proxy || "").split(",").map((e) => e.trim().toLowerCase()).filter(Boolean);
  const direct = (host, port) => {
    const h = String(host).toLowerCase().replace(/^\[|\]$/g, "");
    return noProxy.some((e) => e === "*" || e === h || e === `${h}:${port}` || h.endsWith(e.startsWith(".") ? e : `.${e}`));
  };
  // A socket to host:port through the proxy; cb(err, socket).
  const tunnel = (host, port, cb) => {
    const sock = net.connect(proxyPort, proxy.hostname);
    let head = Buffer.alloc(0);
    const fail = (e) => {
      sock.destroy();
      cb(e);
    };
    const onData = (chunk) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) {
        if (head.length > 16384) fail(new Error("the egress proxy sent an oversized reply"));
        return;
      }
      sock.removeListener("data", onData);
      sock.removeListener("error", fail);
      const status = head.subarray(0, head.indexOf("\r\n")).toString();
      if (status.split(" ")[1] !== "200") return fail(new Error(`the egress proxy refused ${host}:${port}: ${status}`));
      if (end + 4 < head.length) sock.unshift(head.subarray(end + 4));
      cb(null, sock);
    };
    sock.once("error", fail);
    sock.on("data", onData);
    const authority = net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
    sock.once("connect", () => sock.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`));
  };
  // Each connection callback is answered once, whatever the socket does afterwards.
  const once = (cb) => {
    let done = false;
    return (e, s) => {
      if (!done) {
        done = true;
        cb(e, s);
      }
    };
  };
  const secure = (sock, opts, cb) => {
    cb = once(cb);
    const t = tls.connect({ ...opts, socket: sock, servername: opts.servername || (net.isIP(opts.host) ? undefined : opts.host) });
    t.once("secureConnect", () => cb(null, t));
    t.once("error", (e) => cb(e));
  };
  class HttpTunnel extends http.Agent {
    createConnection(opts, cb) {
      const port = opts.port || 80;
      if (direct(opts.host, port)) return super.createConnection(opts);
      tunnel(opts.host, port, cb);
    }
  }
  class HttpsTunnel extends https.Agent {
    createConnection(opts, cb) {
      const port = opts.port || 443;
      if (direct(opts.host, port)) return super.createConnection(opts);
      tunnel(opts.host, port, (e, sock) => (e ? cb(e) : secure(sock, opts, cb)));
    }
  }
  http.globalAgent = new HttpTunnel({ keepAlive: true });
  https.globalAgent = new HttpsTunnel({ keepAlive: true });
  // fetch (undici inside Node): replace its global dispatcher with one that tunnels.
  fetch("data:,").catch(() => {});
  const key = Symbol.for("undici.globalDispatcher.1");
  const Dispatcher = globalThis[key] && globalThis[key].constructor;
  if (typeof Dispatcher !== "function") return;
  globalThis[key] = new Dispatcher({
    connect: (opts, cb) => {
      cb = once(cb);
      const isTls = opts.protocol === "https:";
      const port = Number(opts.port) || (isTls ? 443 : 80);
      if (direct(opts.hostname, port)) {
        const s = isTls ? tls.connect({ host: opts.hostname, port, servername: opts.servername || undefined, ALPNProtocols: ["http/1.1"] }) : net.connect(port, opts.hostname);
        s.once(isTls ? "secureConnect" : "connect", () => cb(null, s));
        s.once("error", (e) => cb(e));
        return;
      }
      tunnel(opts.hostname, port, (e, sock) => {
        if (e) return cb(e);
        if (!isTls) return cb(null, sock);
        secure(sock, { host: opts.hostname, servername: opts.servername || undefined, ALPNProtocols: ["http/1.1"] }, cb);
      });
    },
  });
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
  useProxyFromEnv();
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
