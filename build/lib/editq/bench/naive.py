"""The design a user writes first, for comparison: one Celery task per job, waiting inside the task.

    celery -A editq.bench.naive worker --pool=threads --concurrency=16 -Q $NAIVE_QUEUE

The task submits the edit to fal, polls its status with `time.sleep` until it completes, downloads
the output, uploads it to S3 and writes a manifest. The whole job (not an id) travels in the task
arguments. While the provider works (30-150 s in production) the task holds its worker slot, so the
throughput is slots / latency whatever the provider allows. Nothing here is used by editq.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import boto3
import httpx
import redis
from botocore.config import Config
from celery import Celery
from celery.signals import worker_ready

from editq.worker.keys import Keys

REDIS_URL = os.environ.get("EDITQ_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("NAIVE_PREFIX", "naive")
KEYS = Keys(PREFIX)  # its two Redis keys are named in worker/keys.py like editq's
QUEUE = os.environ.get("NAIVE_QUEUE", "naive")
POLL_S = float(os.environ.get("NAIVE_POLL_S", "1.0"))
FAL = os.environ.get("EDITQ_FAL_BASE_URL", "https://queue.fal.run").rstrip("/")
FAL_KEY = os.environ.get("EDITQ_FAL_KEY", "")
BUCKET = os.environ.get("EDITQ_S3_BUCKET", "editq")

app = Celery("naive", broker=os.environ.get("EDITQ_BROKER_URL") or REDIS_URL)
app.conf.update(task_default_queue=QUEUE, task_ignore_result=True, worker_hijack_root_logger=False)

_r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
_s3: Any = None


def s3() -> Any:
    global _s3
    if _s3 is None:
        _s3 = boto3.client("s3", endpoint_url=os.environ.get("EDITQ_S3_ENDPOINT"), region_name="us-east-1",
                           config=Config(max_pool_connections=64, s3={"addressing_style": "path"}))
    return _s3


@worker_ready.connect
def _ready(**_: object) -> None:
    _r.incr(KEYS.naive_ready)


@app.task(name="naive.edit")
def edit(job: dict[str, Any]) -> None:
    created = job["created_at"]
    headers = {"Authorization": f"Key {FAL_KEY}"}
    ok, rid = False, ""
    with httpx.Client(timeout=60) as http:
        body = {"prompt": job["prompt"], "image_urls": [job["image_url"]], "image_size": _size(job["size"]),
                "quality": job["quality"], "num_images": job["num_images"], "output_format": job["output_format"]}
        resp = http.post(f"{FAL}/openai/gpt-image-2/edit", json=body, headers=headers)
        resp.raise_for_status()
        sub = resp.json()
        rid = sub["request_id"]
        while True:  # wait for the provider inside the task
            st = http.get(sub["status_url"], headers=headers).json()
            if st["status"] == "COMPLETED":
                break
            time.sleep(POLL_S)
        res = http.get(sub["response_url"], headers=headers)
        if res.status_code == 200:
            outputs = []
            for i, img in enumerate(res.json()["images"]):
                data = http.get(img["url"]).content
                key = f"naive/{job['batch']}/{job['job_id']}/{i}.{job['output_format']}"
                s3().put_object(Bucket=BUCKET, Key=key, Body=data, ContentType=img["content_type"])
                outputs.append(key)
            manifest = {"job_id": job["job_id"], "request_id": rid, "outputs": outputs}
            s3().put_object(Bucket=BUCKET, Key=f"naive/{job['batch']}/{job['job_id']}/manifest.json",
                            Body=json.dumps(manifest).encode(), ContentType="application/json")
            ok = True
    _r.rpush(KEYS.naive_done(job["batch"]),
             json.dumps({"job_id": job["job_id"], "ok": ok, "t": time.time(), "created_at": created,
                         "request_id": rid}))


PRESETS = {(1024, 1024): "square_hd", (512, 512): "square", (768, 1024): "portrait_4_3",
           (576, 1024): "portrait_16_9", (1024, 768): "landscape_4_3", (1024, 576): "landscape_16_9"}


def _size(size: str) -> Any:
    if size == "auto":
        return "auto"
    w, h = (int(x) for x in size.split("x"))
    return PRESETS.get((w, h)) or {"width": w, "height": h}
