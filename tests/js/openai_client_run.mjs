// Drives OpenAI's official JavaScript client (npm `openai`) against the editq sandbox and prints one JSON
// object on stdout. Usage: node openai_client_run.mjs <sandbox base URL> <input PNG path>
// (the key comes from OPENAI_API_KEY). Run by tests/test_js_clients.py.
//
// The client takes any base URL (`baseURL`), plain http included: it is pointed at the sandbox's /openai/v1.
// images.edit is synchronous and answers the edited images inline (`b64_json`): the "download" is the decode.
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";

import OpenAI, { APIError, toFile } from "openai";

const [base, imagePath] = process.argv.slice(2);
if (!base || !imagePath) {
  console.error("usage: node openai_client_run.mjs <sandbox base URL> <input PNG path>");
  process.exit(2);
}

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");
const seen = [];
const client = new OpenAI({
  apiKey: process.env.OPENAI_API_KEY,
  baseURL: `${base}/openai/v1`,
  maxRetries: 0, // a refusal is answered once; nothing here should be retried
  // the client's own fetch, recording what it sends (not its `data:,` probe for FormData support)
  fetch: async (url, init) => {
    if (!String(url).startsWith("data:")) {
      const headers = new Headers(init?.headers);
      const body = init?.body instanceof FormData
        ? [...init.body.entries()].map(([name, value]) => (typeof value === "string"
          ? { name, value } : { name, filename: value.name, type: value.type, bytes: value.size }))
        : null;
      seen.push({ method: init?.method ?? "GET", url: String(url), authorization: headers.get("authorization"),
        form: body });
    }
    const response = await fetch(url, init);
    if (response.headers.get("content-type")?.startsWith("application/json")) {
      // the images as they came over the wire, to compare with what the client hands back
      const body = await response.clone().json();
      seen.at(-1).status = response.status;
      seen.at(-1).wire_b64_sha256 = (body.data ?? []).map((d) => sha256(d.b64_json));
    }
    return response;
  },
});


// width x height from the image's own header (PNG IHDR, WebP VP8/VP8L/VP8X, JPEG SOFn)
function imageSize(b) {
  if (b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) {
    return { format: "png", width: b.readUInt32BE(16), height: b.readUInt32BE(20) };
  }
  if (b.toString("latin1", 0, 4) === "RIFF" && b.toString("latin1", 8, 12) === "WEBP") {
    const chunk = b.toString("latin1", 12, 16);
    if (chunk === "VP8X") return { format: "webp", width: 1 + b.readUIntLE(24, 3), height: 1 + b.readUIntLE(27, 3) };
    if (chunk === "VP8L") {
      const bits = b.readUInt32LE(21);
      return { format: "webp", width: 1 + (bits & 0x3fff), height: 1 + ((bits >> 14) & 0x3fff) };
    }
    return { format: "webp", width: b.readUInt16LE(26) & 0x3fff, height: b.readUInt16LE(28) & 0x3fff };
  }
  if (b[0] === 0xff && b[1] === 0xd8) {
    for (let i = 2; i < b.length - 9;) {
      const marker = b[i + 1];
      if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
        return { format: "jpeg", width: b.readUInt16BE(i + 7), height: b.readUInt16BE(i + 5) };
      }
      i += 2 + b.readUInt16BE(i + 2);
    }
  }
  return { format: null, width: null, height: null };
}

async function errorOf(promise) {
  try {
    await promise;
    return null;
  } catch (error) {
    if (!(error instanceof APIError)) throw error;
    return {
      class: error.constructor.name, status: error.status, code: error.code, type: error.type, param: error.param,
      request_id: error.requestID, message: error.message,
    };
  }
}

const png = await readFile(imagePath);
const out = { input_sha256: sha256(png) };

// 1. an edit with a typed input file: the answer's images, decoded
const response = await client.images.edit({
  model: "gpt-image-2",
  image: await toFile(png, "in.png", { type: "image/png" }),
  prompt: "a js client edit",
  size: "1024x1024",
  quality: "low",
});
out.edit = {
  created: response.created, size: response.size, output_format: response.output_format,
  quality: response.quality, background: response.background, usage: response.usage,
  images: response.data.map((image) => {
    const bytes = Buffer.from(image.b64_json, "base64");
    return { bytes: bytes.length, sha256: sha256(bytes), ...imageSize(bytes), b64_sha256: sha256(image.b64_json),
      base64: bytes.toString("base64") };
  }),
  request_id: response._request_id,
};
out.edit_request = seen.at(-1);

// 2. two edits the API refuses, as the client surfaces them: a file part without a type (toFile with no
//    `type` sends application/octet-stream) and a size gpt-image-2 does not take (not multiples of 16)
out.untyped = await errorOf(client.images.edit({
  model: "gpt-image-2", image: await toFile(png, "in.png"), prompt: "an untyped input",
}));
out.untyped_request = seen.at(-1);
out.bad_size = await errorOf(client.images.edit({
  model: "gpt-image-2", image: await toFile(png, "in.png", { type: "image/png" }), prompt: "x", size: "1000x1000",
}));
out.requests = seen.map((r) => `${r.method} ${new URL(r.url).pathname}`);
console.log(JSON.stringify(out));
