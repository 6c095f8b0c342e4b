// Drives fal's official JavaScript client (@fal-ai/client) against the editq sandbox and prints one JSON
// object on stdout. Usage: node fal_client_run.mjs <sandbox base URL> <input image path>
// (the key comes from FAL_KEY). Run by tests/test_sandbox_fal.py::test_fal_js_client_against_the_sandbox.
//
// The client hard-codes https://queue.fal.run and https://rest.fal.ai; its documented `requestMiddleware`
// hook may rewrite every request's URL, which points it at the sandbox's /fal and /fal-rest (plain http).
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";

import { ApiError, ValidationError, createFalClient } from "@fal-ai/client";

const [base, imagePath] = process.argv.slice(2);
if (!base || !imagePath) {
  console.error("usage: node fal_client_run.mjs <sandbox base URL> <input image path>");
  process.exit(2);
}
const APP = "openai/gpt-image-2/edit";
const HOSTS = [
  ["https://queue.fal.run/", `${base}/fal/`],
  ["https://rest.fal.ai/", `${base}/fal-rest/`],
];

const seen = [];
const fal = createFalClient({
  credentials: process.env.FAL_KEY,
  requestMiddleware: async (request) => {
    let url = request.url;
    for (const [from, to] of HOSTS) {
      if (url.startsWith(from)) url = to + url.slice(from.length);
    }
    seen.push(`${request.method} ${new URL(url).pathname}`);
    return { ...request, url };
  },
});

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

async function download(image) {
  const response = await fetch(image.url);
  const bytes = Buffer.from(await response.arrayBuffer());
  return {
    url: image.url, status: response.status, content_type: response.headers.get("content-type"),
    bytes: bytes.length, sha256: sha256(bytes), width: image.width, height: image.height,
    file_size: image.file_size,
  };
}

async function errorOf(promise) {
  try {
    await promise;
    return null;
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    return {
      name: error.name, status: error.status, body: error.body,
      validation: error instanceof ValidationError ? error.fieldErrors : null,
    };
  }
}

const png = await readFile(imagePath);
const out = { input_sha256: sha256(png) };

// 1. submit with a Blob input (the client uploads it through storage/upload/initiate + PUT), then follow
//    the status stream with logs and fetch the result
const queued = await fal.queue.submit(APP, {
  input: { prompt: "a js client edit", image_urls: [new Blob([png], { type: "image/png" })], image_size: "square" },
  priority: "low",
});
out.submitted = { status: queued.status, request_id: queued.request_id, status_url: queued.status_url };
const events = [];
const streamed = await fal.queue.subscribeToStatus(APP, {
  requestId: queued.request_id, mode: "streaming", logs: true,
  onQueueUpdate: (update) => events.push({ status: update.status, logs: (update.logs ?? []).map((l) => l.message) }),
});
out.stream = { final: streamed.status, events };
const result = await fal.queue.result(APP, { requestId: queued.request_id });
out.stream_result = { request_id: result.requestId, images: await Promise.all(result.data.images.map(download)) };

// 2. subscribe (submit + polling) with a data URI input and the schema's defaults
const dataUri = `data:image/png;base64,${png.toString("base64")}`;
const polled = await fal.subscribe(APP, {
  input: { prompt: "a polled js edit", image_urls: [dataUri], num_images: 2, output_format: "webp" },
  pollInterval: 100, logs: true,
});
out.poll_result = { request_id: polled.requestId, images: await Promise.all(polled.data.images.map(download)) };

// 3. errors as the client surfaces them
out.invalid = await errorOf(fal.queue.submit(APP, { input: { prompt: "x", image_urls: [dataUri], num_images: "2" } }));
out.cancel_completed = await errorOf(fal.queue.cancel(APP, { requestId: polled.requestId }));
out.requests = seen;
console.log(JSON.stringify(out));
