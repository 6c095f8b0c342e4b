// Drives ModelRunner's official JavaScript client (@modelrunner/client, a fork of fal-js) against the editq
// sandbox and prints one JSON object on stdout. Usage: node modelrunner_client_run.mjs <sandbox base URL>
// <input image path> (the key comes from MODELRUNNER_KEY). Run by
// tests/test_js_clients.py::test_modelrunner_js_client_queue_and_outputs.
//
// @modelrunner/client is not on the npm registry (neither it nor `modelrunner`, the name its repo README gives,
// resolves there), so it is not in package.json. The module is imported from EDITQ_MODELRUNNER_JS_CLIENT (a
// path to an ESM build of github:modelrunner/modelrunner-js libs/client, tag client-v1.3.0) when that is set,
// else as the package `@modelrunner/client` (once it is installable).
//
// The client hard-codes https://queue.modelrunner.run and https://modelrunner.run; its `requestMiddleware`
// hook may rewrite every request's URL, which points it at the sandbox's /modelrunner (plain http). (Its
// `proxyUrl` only applies in a browser: withProxy() is a passthrough when `window` is undefined.)
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { pathToFileURL } from "node:url";

const [base, imagePath] = process.argv.slice(2);
if (!base || !imagePath) {
  console.error("usage: node modelrunner_client_run.mjs <sandbox base URL> <input image path>");
  process.exit(2);
}
const where = process.env.EDITQ_MODELRUNNER_JS_CLIENT;
const { ApiError, ValidationError, createModelrunnerClient } = await import(
  where ? pathToFileURL(where).href : "@modelrunner/client");

const MODEL = "openai/gpt-image-2/edit";
const HOSTS = [
  ["https://queue.modelrunner.run/", `${base}/modelrunner/`],
  ["https://modelrunner.run/", `${base}/modelrunner/`],
];

const requests = [];
const recordingFetch = async (url, init) => {
  const response = await fetch(url, init);
  const u = new URL(url);
  requests.push({
    method: init?.method ?? "GET", path: u.pathname + u.search, status: response.status,
    authorization: new Headers(init?.headers).get("authorization"),
    priority: new Headers(init?.headers).get("x-modelrunner-queue-priority"),
  });
  return response;
};
const client = createModelrunnerClient({
  credentials: process.env.MODELRUNNER_KEY,
  fetch: recordingFetch,
  requestMiddleware: async (request) => {
    let url = request.url;
    for (const [from, to] of HOSTS) {
      if (url.startsWith(from)) url = to + url.slice(from.length);
    }
    return { ...request, url };
  },
});

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

// the pixel size an image's own header states (PNG IHDR, JPEG SOFn, WebP VP8/VP8L/VP8X)
function decodedSize(b) {
  if (b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) {
    return { format: "png", width: b.readUInt32BE(16), height: b.readUInt32BE(20) };
  }
  if (b[0] === 0xff && b[1] === 0xd8) {
    for (let i = 2; i + 9 < b.length;) {
      if (b[i] !== 0xff) { i += 1; continue; }
      const marker = b[i + 1];
      if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
        return { format: "jpeg", width: b.readUInt16BE(i + 7), height: b.readUInt16BE(i + 5) };
      }
      i += 2 + b.readUInt16BE(i + 2);
    }
  }
  if (b.toString("ascii", 0, 4) === "RIFF" && b.toString("ascii", 8, 12) === "WEBP") {
    const chunk = b.toString("ascii", 12, 16);
    if (chunk === "VP8X") return { format: "webp", width: 1 + b.readUIntLE(24, 3), height: 1 + b.readUIntLE(27, 3) };
    if (chunk === "VP8 ") return { format: "webp", width: b.readUInt16LE(26) & 0x3fff, height: b.readUInt16LE(28) & 0x3fff };
    if (chunk === "VP8L") {
      const bits = b.readUInt32LE(21);
      return { format: "webp", width: (bits & 0x3fff) + 1, height: ((bits >> 14) & 0x3fff) + 1 };
    }
  }
  return { format: null, width: null, height: null };
}

async function download(image) {
  const response = await fetch(image.url);
  const bytes = Buffer.from(await response.arrayBuffer());
  return {
    url: image.url, status: response.status, content_type: response.headers.get("content-type"),
    bytes: bytes.length, sha256: sha256(bytes), stated: { width: image.width, height: image.height },
    decoded: decodedSize(bytes),
  };
}

async function errorOf(promise) {
  try {
    await promise;
    return null;
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    return {
      name: error.name, status: error.status, message: error.message, request_id: error.requestId,
      body: error.body, field_errors: error instanceof ValidationError ? error.fieldErrors : null,
    };
  }
}

const png = await readFile(imagePath);
const out = { input_sha256: sha256(png) };
const dataUri = `data:image/png;base64,${png.toString("base64")}`;

// 1. submit, follow the status by polling (the client builds /{owner}/{alias}/requests/{id}/status, without
//    the model's /edit path), fetch the result object (model output nested under `output`), download outputs
const queued = await client.queue.submit(MODEL, {
  input: { prompt: "a js client edit", image_urls: [dataUri], image_size: "square_hd", num_images: 2,
           quality: "low", output_format: "png" },
  priority: "low",
});
out.submitted = {
  status: queued.status, request_id: queued.request_id, status_url: queued.status_url,
  response_url: queued.response_url, cancel_url: queued.cancel_url,
};
const updates = [];
const done = await client.queue.subscribeToStatus(MODEL, {
  requestId: queued.request_id, mode: "polling", pollInterval: 100,
  onQueueUpdate: (update) => updates.push(update.status),
});
out.status = { final: done.status, updates };
const result = await client.queue.result(MODEL, { requestId: queued.request_id });
const object = result.data;
out.result = {
  request_id: result.requestId, id: object.id, status: object.status, billingStatus: object.billingStatus,
  modelEndpoint: object.modelEndpoint, totalPrice: object.totalPrice,
  images: await Promise.all(object.output.images.map(download)),
};

// 2. subscribe (submit + poll + result in one call) with a jpeg output
const subscribed = await client.subscribe(MODEL, {
  input: { prompt: "a js client subscribe", image_urls: [dataUri], image_size: "landscape_4_3",
           output_format: "jpeg", quality: "low" },
  pollInterval: 100,
});
out.subscribed = {
  request_id: subscribed.requestId, billingStatus: subscribed.data.billingStatus,
  images: await Promise.all(subscribed.data.output.images.map(download)),
};

// 3. refused: num_images as a string (the service validates JSON types strictly), and an unknown request
out.refused = await errorOf(client.queue.submit(MODEL, {
  input: { prompt: "refused", image_urls: [dataUri], num_images: "2" },
}));
out.unknown = await errorOf(client.queue.status(MODEL, { requestId: "x".repeat(21) }));

out.requests = requests;
console.log(JSON.stringify(out));
