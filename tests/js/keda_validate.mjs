// Validates KEDA ScaledObjects against KEDA's CRD schema as published in @kubernetes-models/keda
// (generated from kedacore/keda's CRDs). Reads a JSON array of objects from the file named by argv[2];
// prints {"results": [{"name", "error"}]} (error null when the object is valid).
import { readFileSync } from "node:fs";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";

const docs = JSON.parse(readFileSync(process.argv[2], "utf8"));
const results = docs.map((doc) => {
  try {
    new ScaledObject(doc).validate();
    return { name: doc.metadata?.name ?? null, error: null };
  } catch (err) {
    return { name: doc.metadata?.name ?? null, error: String(err?.message ?? err) };
  }
});
console.log(JSON.stringify({ results }));
