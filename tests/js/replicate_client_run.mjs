// Drives Replicate's official JavaScript client (npm `replicate`) against the editq sandbox and prints one JSON
// object on stdout. Usage: node replicate_client_run.mjs <sandbox base URL> <input PNG path>
// (the token comes from REPLICATE_API_TOKEN). Run by tests/test_js_clients.py.
//
// Pointing it at the sandbox: `baseUrl` (default "https://api.replicate.com/v1"; unlike the Python client the
// JS client's base includes /v1, and every route is resolved against it) = <sandbox>/replicate/v1.
//
// Outputs: `run()` wraps only output strings starting with "https:" or "data:" in FileOutput objects
// (index.js `run`), so the sandbox's plain-http output URLs come back as strings. To see what FileOutput
// does with a real output URL, a second client gets a `fetch` (the client's documented option, also what
// FileOutput downloads with) that presents the sandbox's delivery URLs as https://replicate.delivery/... and
// sends requests for them back to the sandbox, recording the headers FileOutput sends. FileOutput calls
// `fetch(url)` with no headers: no Authorization reaches the output host.
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";

import Replicate from "replicate";

const [base, imagePath] = process.argv.slice(2);
if (!base || !imagePath) {
  console.error("usage: node replicate_client_run.mjs <sandbox base URL> <input PNG path>");
  process.exit(2);
}
const MODEL = "openai/gpt-image-2";
const TOKEN = process.env.REPLICATE_API_TOKEN;
const SANDBOX_DELIVERY = `${base}/replicate/delivery/`;
const REAL_DELIVERY = "https://replicate.delivery/";

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");
const seen = [];

function recordingFetch({ realDeliveryUrls = false, deliveryToken = null } = {}) {
  return async (input, init = {}) => {
    let url = String(input instanceof Request ? input.url : input);
    const headers = new Headers(init.headers);
    const delivery = url.startsWith(REAL_DELIVERY);
    if (delivery) {
      url = SANDBOX_DELIVERY + url.slice(REAL_DELIVERY.length);
      if (deliveryToken) headers.set("Authorization", `Bearer ${deliveryToken}`);
    }
    const entry = { method: init.method ?? "GET", path: new URL(url).pathname, delivery,
      authorization: headers.get("authorization") };
    seen.push(entry);
    const response = await fetch(url, { ...init, headers });
    entry.status = response.status;
    if (!realDeliveryUrls || !response.headers.get("content-type")?.includes("json")) return response;
    const text = (await response.text()).replaceAll(SANDBOX_DELIVERY, REAL_DELIVERY);
    return new Response(text, { status: response.status, statusText: response.statusText, headers: response.headers });
  };
}

const replicate = new Replicate({ auth: TOKEN, baseUrl: `${base}/replicate/v1`, fetch: recordingFetch() });

async function errorOf(promise) {
  try {
    await promise;
    return null;
  } catch (error) {
    if (error.name === "ApiError") { // lib/error.js; the package does not export the class
      // request() has read the body already: it is quoted in the message ("...: <body>.")
      const quoted = error.message.match(/failed with status \d+[^:]*: (.*)\.$/s);
      let body = null;
      try { body = quoted ? JSON.parse(quoted[1]) : null; } catch { body = quoted?.[1] ?? null; }
      return { name: error.name, status: error.response.status, body };
    }
    return { name: error.name, message: error.message };
  }
}

async function download(url, headers = {}) {
  const response = await fetch(url, { headers });
  const bytes = Buffer.from(await response.arrayBuffer());
  return { url, status: response.status, content_type: response.headers.get("content-type"), bytes: bytes.length,
    sha256: sha256(bytes) };
}

async function fileOutputs(output) {
  return Promise.all(output.map(async (file) => {
    const entry = { type: file?.constructor?.name ?? typeof file, url: String(file.url?.() ?? file) };
    try {
      const blob = await file.blob();
      const bytes = Buffer.from(await blob.arrayBuffer());
      return { ...entry, bytes: bytes.length, sha256: sha256(bytes), content_type: blob.type };
    } catch (error) {
      return { ...entry, error: { name: error.name, message: error.message } };
    }
  }));
}

const png = await readFile(imagePath);
const out = { input_sha256: sha256(png) };
const input = { prompt: "a js client edit", aspect_ratio: "3:2", output_format: "png", number_of_images: 2,
  quality: "low" };

// 1. predictions.create (the Buffer input is uploaded through the Files API first) + wait (polling)
const created = await replicate.predictions.create({ model: MODEL, input: { ...input, input_images: [png] } });
out.created = { id: created.id, status: created.status, input_images: created.input.input_images };
const done = await replicate.wait(created, { interval: 100 });
out.waited = { id: done.id, status: done.status, output: done.output, logs: done.logs, metrics: done.metrics };
// downloads the way FileOutput does them (no headers), and with the API token
out.download_plain = await Promise.all(done.output.map((url) => download(url)));
out.download_token = await Promise.all(done.output.map((url) => download(url, { Authorization: `Bearer ${TOKEN}` })));

// 2. run() (Prefer: wait): with the sandbox's http URLs the output stays plain strings
const dataUri = `data:image/png;base64,${png.toString("base64")}`;
const ran = await replicate.run(MODEL, { input: { ...input, number_of_images: 1, input_images: [dataUri] } });
out.run_plain = ran.map((value) => ({ type: typeof value, value: String(value) }));

// 3. run() with the output URLs as the real API names them: FileOutput objects, read as the client reads them
const asReal = new Replicate({ auth: TOKEN, baseUrl: `${base}/replicate/v1`,
  fetch: recordingFetch({ realDeliveryUrls: true }) });
out.run_file_output = await fileOutputs(await asReal.run(MODEL, { input: { ...input, input_images: [dataUri] } }));
out.file_output_requests = seen.filter((r) => r.delivery);
// ... and with a fetch that adds the token for the output host (what editq's auth_hosts does)
const withToken = new Replicate({ auth: TOKEN, baseUrl: `${base}/replicate/v1`,
  fetch: recordingFetch({ realDeliveryUrls: true, deliveryToken: TOKEN }) });
const before = seen.length;
out.run_file_output_token = await fileOutputs(
  await withToken.run(MODEL, { input: { ...input, input_images: [dataUri] } }));
out.file_output_token_requests = seen.slice(before).filter((r) => r.delivery);

// 4. a cancel while the prediction runs (the sandbox's latency raised meanwhile), errors as the client surfaces them
const config = (patch) => fetch(`${base}/_sandbox/config`, { method: "PATCH", body: JSON.stringify(patch),
  headers: { "Content-Type": "application/json" } });
const { latency_s: latency } = await (await fetch(`${base}/_sandbox/config`)).json();
await config({ latency_s: 60 });
try {
  const slow = await replicate.predictions.create({ model: MODEL, input: { prompt: "to be canceled" } });
  let running = slow;
  for (let i = 0; i < 200 && running.status === "starting"; i++) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    running = await replicate.predictions.get(slow.id);
  }
  const canceled = await replicate.predictions.cancel(slow.id);
  out.cancel = { id: slow.id, before: running.status, status: canceled.status, error: canceled.error,
    after: (await replicate.predictions.get(slow.id)).status };
} finally {
  await config({ latency_s: latency });
}
out.cancel_unknown = await errorOf(replicate.predictions.cancel("nosuchprediction"));
out.invalid = await errorOf(replicate.predictions.create({ model: MODEL, input: { prompt: "x", number_of_images: "2" } }));
out.requests = seen.filter((r) => !r.delivery).map((r) => `${r.method} ${r.path}`);
console.log(JSON.stringify(out));
