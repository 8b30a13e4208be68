"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /api/v1/openapi.json``
(the view is in :mod:`streams.pages`; this module imports no app, so tools and tests
can read the document without building one).

The document is written here, as data (no generator reads the views): it is the
contract, and ``tests/integration/test_openapi.py`` holds it and the running views
to each other both ways — every documented operation answers on a worker and its
JSON validates against the documented schema, and every route the app registers
(:func:`app_routes`, the same router a worker serves) is documented.

``python -m streams.openapi`` prints the document; ``--routes`` prints the routes the
app registers.  :func:`validate` checks a JSON value against the subset of JSON Schema
the document uses (``type``, ``required``, ``properties``, ``additionalProperties``,
``items``, ``enum``, ``minimum``/``maximum``, ``$ref``).
"""

from __future__ import annotations

import copy
import importlib
import json
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["DOCUMENT_JSON", "OPENAPI_PATH", "app_routes", "document", "documented_routes", "validate"]

OPENAPI_PATH = "/api/v1/openapi.json"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    out = dict(schema)
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = [kind, "null"]
    return out


_STR: Schema = {"type": "string"}
_INT: Schema = {"type": "integer"}
_NUM: Schema = {"type": "number"}
_BOOL: Schema = {"type": "boolean"}
_SHA256: Schema = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_COUNTS: Schema = {"type": "object", "additionalProperties": _NUM}
_RATE: Schema = {"type": ["number", "null"], "minimum": 0, "maximum": 1,
                 "description": "fraction 0..1; null while nothing was counted"}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "description": "Every error the API returns, with a 4xx/5xx status.",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "stable machine-readable code, e.g. `invalid_image`"},
                    "message": {"type": "string"},
                },
            }
        },
    },
    "ErrorInfo": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {"code": _STR, "message": _STR},
    },
    "SubmitAccepted": {
        "type": "object",
        "required": ["task_id", "status", "total_images"],
        "properties": {
            "task_id": _STR,
            "status": {"type": "string", "enum": ["pending"]},
            "total_images": {"type": "integer", "minimum": 1},
        },
    },
    "ImageResult": {
        "type": "object",
        "description": "The outcome for one image (also the value of the `image-edit-results` topic).",
        "required": ["task_id", "index", "filename", "status", "from_cache"],
        "properties": {
            "task_id": _STR,
            "index": {"type": "integer", "minimum": 0},
            "filename": _STR,
            "status": {"type": "string", "enum": ["completed", "failed"]},
            "result_url": _nullable(_STR),
            "from_cache": _BOOL,
            "error": {"type": ["object", "null"], "required": ["code", "message"],
                      "properties": {"code": _STR, "message": _STR}},
            "cache_key": _nullable(_STR),
            "duration_ms": _NUM,
            "cache_status": {"type": ["string", "null"], "enum": ["HIT", "MISS", "COALESCED", None]},
            "upstream_request_id": _nullable(_STR),
            "result_blob": {**_nullable(_STR), "description": "sha256 of the result in `/api/v1/blobs/{sha256}`"},
            "source_blob": {**_nullable(_STR), "description": "sha256 of the input image in the blob store"},
            "result_urls": {"type": "array", "items": _STR,
                            "description": "every output of the call (`edit_params.n`), upstream order; "
                                           "`result_url` is the first"},
            "inputs": {"type": "array", "items": {"type": "integer", "minimum": 0},
                       "description": "the task's image indexes this result was made from (its group)"},
            "model": _nullable(_STR),
            "cost": {"oneOf": [_ref("Cost"), {"type": "null"}]},
        },
    },
    "Cost": {
        "type": "object",
        "description": "spent: generated images × the model's catalogue price in IMAGESTREAM_REGION; "
                       "saved: what cache hits and coalesced jobs would have cost (prices unconfirmed, "
                       "see config/models.toml)",
        "required": ["currency", "spent", "saved"],
        "properties": {"currency": _STR, "spent": _NUM, "saved": _NUM},
    },
    "TaskStatus": {
        "type": "object",
        "description": "Snapshot of a task (also the value of the `image-edit-task-status` topic).",
        "required": ["task_id", "status", "total_images", "completed_images", "failed_images", "progress",
                     "results", "created_at", "updated_at"],
        "properties": {
            "task_id": _STR,
            "status": {"type": "string", "enum": ["pending", "processing", "completed", "partial", "failed"]},
            "total_images": {"type": "integer", "minimum": 0},
            "completed_images": {"type": "integer", "minimum": 0},
            "failed_images": {"type": "integer", "minimum": 0},
            "progress": {"type": "number", "minimum": 0, "maximum": 100},
            "results": {"type": "array", "items": _ref("ImageResult")},
            "created_at": _NUM,
            "updated_at": _NUM,
            "error": {"type": ["object", "null"], "required": ["code", "message"],
                      "properties": {"code": _STR, "message": _STR}},
            "cost": {"oneOf": [_ref("Cost"), {"type": "null"}]},
        },
    },
    "BlobStored": {
        "type": "object",
        "required": ["sha256", "size", "format", "width", "height"],
        "properties": {"sha256": _SHA256, "size": _INT, "format": _STR, "width": _INT, "height": _INT},
    },
    "CacheInvalidation": {
        "type": "object",
        "required": ["cache_key", "status"],
        "properties": {"cache_key": _SHA256, "status": {"type": "string", "enum": ["invalidation_enqueued"]}},
    },
    "DimensionResult": {
        "type": "object",
        "required": ["session_id", "resource", "scene", "width", "height", "source"],
        "properties": {
            "session_id": _STR,
            "resource": _STR,
            "scene": _STR,
            "url": _nullable(_STR),
            "width": _INT,
            "height": _INT,
            "orientation": _INT,
            "format": _nullable(_STR),
            "source": {"type": "string", "enum": ["cache", "fetched", "computed", "placeholder"]},
            "fetched_at": _nullable(_NUM),
            "bytes_read": _INT,
            "raw_width": _INT,
            "raw_height": _INT,
            "error": {"type": ["object", "null"], "required": ["code", "message"],
                      "properties": {"code": _STR, "message": _STR}},
            "flagged": _nullable(_STR),
        },
    },
    "DimensionRequest": {
        "type": "object",
        "required": ["session_id", "resource", "scene"],
        "description": "`data` (base64 image or data URI) is measured in-line; with only `url` it behaves like the GET.",
        "properties": {
            "session_id": _STR,
            "resource": _STR,
            "scene": _STR,
            "url": _STR,
            "data": _STR,
            "refresh": _BOOL,
        },
    },
    "DimensionBatchRequest": {
        "type": "object",
        "required": ["session_id", "scene", "items"],
        "description": "One session's images (e.g. a conversation's screenshots), answered in order; at most "
                       "`IMAGESTREAM_DIMENSION_BATCH_MAX` items (default 256).",
        "properties": {
            "session_id": _STR,
            "scene": _STR,
            "refresh": _BOOL,
            "items": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["resource"],
                    "properties": {"resource": _STR, "url": _STR, "data": _STR, "refresh": _BOOL},
                },
            },
        },
    },
    "DimensionBatchResult": {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": _ref("DimensionResult")}},
    },
    "PrewarmRequest": {
        "type": "object",
        "required": ["urls"],
        "properties": {"urls": {"type": "array", "items": _STR, "maxItems": 1000}, "refresh": _BOOL},
    },
    "PrewarmAccepted": {
        "type": "object",
        "required": ["accepted", "enqueued"],
        "properties": {"accepted": _INT, "enqueued": _INT},
    },
    "Stats": {
        "type": "object",
        "description": "Counters of one worker since it started.",
        "required": ["tasks", "images", "cache", "upstream", "dimensions", "dead_letters", "consumer_lag"],
        "properties": {
            "tasks": {
                "type": "object",
                "required": ["submitted", "planned", "finished", "completion_rate", "failure_rate"],
                "properties": {"submitted": _NUM, "planned": _NUM, "finished": _COUNTS,
                               "completion_rate": _RATE, "failure_rate": _RATE},
            },
            "images": {
                "type": "object",
                "required": ["planned", "completed", "failed", "failed_by_code", "from_cache",
                             "completion_rate", "failure_rate"],
                "properties": {"planned": _NUM, "completed": _NUM, "failed": _NUM, "failed_by_code": _COUNTS,
                               "from_cache": _NUM, "completion_rate": _RATE, "failure_rate": _RATE},
            },
            "cache": {
                "type": "object",
                "required": ["hits", "coalesced", "misses", "hit_rate", "upstream_calls_saved"],
                "properties": {"hits": _NUM, "coalesced": _NUM, "misses": _NUM, "hit_rate": _RATE,
                               "upstream_calls_saved": _NUM},
            },
            "upstream": {
                "type": "object",
                "required": ["calls", "retries", "errors_by_code", "rate_limited_429", "in_flight"],
                "properties": {"calls": _NUM, "retries": _NUM, "errors_by_code": _COUNTS,
                               "rate_limited_429": _NUM,
                               "in_flight": {**_COUNTS, "description": "upstream calls in flight, by partition"},
                               "blocked": {"type": "array", "description": "models not called after an "
                                           "account-state error (one probe every ≤ 30 s)",
                                           "items": {"type": "object", "properties": {
                                               "model": _STR, "code": _STR, "message": _STR, "since": _NUM}}},
                               "blocked_refusals": _NUM, "probes": _NUM},
            },
            "cost": {
                "type": "object",
                "properties": {"currency": _STR, "region": _STR, "spent": _NUM, "saved": _NUM,
                               "by_model": {"type": "object", "additionalProperties": {
                                   "type": "object", "properties": {"spent": _NUM, "saved": _NUM}}}},
            },
            "dimensions": {
                "type": "object",
                "required": ["requests", "cache_hits", "cache_misses", "placeholders", "computed", "fetches",
                             "fetch_failures_by_reason", "remembered_failures_by_reason",
                             "revalidations_by_result", "bytes_read"],
                "properties": {"requests": _NUM, "cache_hits": _NUM, "cache_misses": _NUM, "placeholders": _NUM,
                               "computed": _NUM, "fetches": _NUM, "fetch_failures_by_reason": _COUNTS,
                               "remembered_failures_by_reason": {
                                   **_COUNTS, "description": "requests answered from a remembered failure"},
                               "revalidations_by_result": {
                                   **_COUNTS, "description": "conditional GETs: not_modified, modified, failed"},
                               "bytes_read": _NUM},
            },
            "dead_letters": _COUNTS,
            "consumer_lag": {**_COUNTS, "description": "end offset − committed offset, by `topic[partition]`"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "rebalancing", "in_recovery", "assigned_partitions", "uptime_s"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "starting"]},
            "rebalancing": _BOOL,
            "in_recovery": _BOOL,
            "assigned_partitions": _INT,
            "uptime_s": _NUM,
        },
    },
    "OpenAPI": {"type": "object", "required": ["openapi", "info", "paths"]},
    "FaustIndex": {"type": "object", "required": ["status"], "properties": {"status": _STR}},
    "HostPartitions": {
        "type": "object",
        "description": "worker URL → topic → partitions",
        "additionalProperties": {"type": "object", "additionalProperties": {"type": "array", "items": _INT}},
    },
}


def _json(schema: Schema, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str, *codes: str) -> dict[str, Any]:
    text = description + (f" (codes: {', '.join(f'`{c}`' for c in codes)})" if codes else "")
    return _json(_ref("Error"), text)


def _html(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


_NOT_READY = {
    **_error("the worker is joining the group or recovering tables", "not_ready"),
    "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
}
_UNAUTHORIZED = _error("missing or wrong bearer token (only when IMAGESTREAM_API_TOKEN is set)", "unauthorized")


def _path_param(name: str, description: str, schema: Schema = _STR) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def _query(name: str, description: str, *, required: bool = False, schema: Schema = _STR) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


_DIMENSION_QUERY = [
    _query("session_id", "the client's session", required=True),
    _query("resource", "the resource the image belongs to", required=True),
    _query("scene", "where it is shown", required=True),
    _query("url", "the image; without it the call is a lookup (404 on a miss)"),
    _query("refresh", "fetch again even when the size is known", schema={"type": "string", "enum": ["true", "false"]}),
]

_PUBLIC: list[dict[str, list[str]]] = []  # no security requirement

PATHS: dict[str, dict[str, Any]] = {
    "/api/v1/image-edit/submit": {
        "post": {
            "operationId": "submitTask",
            "tags": ["image-edit"],
            "summary": "Submit a task: 1..N images and one edit",
            "description": "Everything is validated before anything is enqueued; the images go to the blob store "
                           "and one TaskRequest is published to `image-edit-requests`.",
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["images", "edit_type"],
                            "properties": {
                                "images": {"type": "array", "minItems": 1, "maxItems": 50,
                                           "items": {"type": "string", "contentMediaType": "application/octet-stream"},
                                           "description": "image files (JPEG, PNG, WebP, …), at most 10 MB each"},
                                "edit_type": {"type": "string", "description": "a preset of config/presets.toml",
                                              "examples": ["enhance", "remove_background", "custom"]},
                                "edit_params": {"type": "string", "contentMediaType": "application/json",
                                                "description": 'JSON object: {"prompt", "model" (a name from config/models.toml; default IMAGESTREAM_MODEL), "negative_prompt", "seed", "n", "size", "prompt_extend", …}, each checked against what the model takes'},
                                "groups": {"type": "string", "contentMediaType": "application/json",
                                           "description": "JSON list of lists of 0-based image indexes (1-3 "
                                                          "each, order significant): each group is one call "
                                                          "and one result; absent: each image alone"},
                            },
                        }
                    }
                },
            },
            "responses": {
                "202": _json(_ref("SubmitAccepted"), "accepted; follow it at /api/v1/image-edit/task/{task_id}"),
                "400": _error("the task is invalid", "no_images", "too_many_images", "invalid_image",
                              "unsupported_format", "unknown_edit_type", "unknown_model", "invalid_edit_params", "invalid_groups", "missing_prompt",
                              "prompt_too_long", "invalid_multipart", "invalid_content_type"),
                "401": _UNAUTHORIZED,
                "413": _error("an image or the body is too large (also decompression bombs)", "image_too_large",
                              "request_too_large"),
            },
        }
    },
    "/api/v1/image-edit/task/{task_id}": {
        "get": {
            "operationId": "getTask",
            "tags": ["image-edit"],
            "summary": "A task's status (answered by the worker owning its partition)",
            "parameters": [_path_param("task_id", "the id returned by submit (or given in a Kafka request)")],
            "responses": {
                "200": _json(_ref("TaskStatus"), "the task's current snapshot"),
                "401": _UNAUTHORIZED,
                "404": _error("no such task (yet)", "task_not_found"),
                "503": _NOT_READY,
            },
        }
    },
    "/api/v1/blobs": {
        "post": {
            "operationId": "uploadBlob",
            "tags": ["image-edit"],
            "summary": "Upload one input image (raw body) to reference it as `{\"blob\": sha256}` in a Kafka task",
            "description": "Checked like a submitted image (format, size, pixels) before it is stored.",
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                    "contentMediaType": "image/*"}}},
            },
            "responses": {
                "201": _json(_ref("BlobStored"), "stored (content-addressed: uploading it again is harmless)"),
                "400": _error("not an image we accept", "invalid_image", "unsupported_format"),
                "401": _UNAUTHORIZED,
                "413": _error("over the image size or pixel limit", "image_too_large", "request_too_large"),
            },
        }
    },
    "/api/v1/blobs/{sha256}": {
        "get": {
            "operationId": "getBlob",
            "tags": ["image-edit"],
            "summary": "Bytes of an input or result image, by content hash (immutable)",
            "parameters": [_path_param("sha256", "lowercase hex sha256", _SHA256)],
            "responses": {
                "200": {"description": "the image", "headers": {"ETag": {"schema": _STR}},
                        "content": {"image/*": {"schema": {"type": "string", "contentMediaType": "image/*"}}}},
                "302": {"description": "redirect to a presigned object-store URL (IMAGESTREAM_BLOB_PRESIGN)"},
                "304": {"description": "not modified (If-None-Match)"},
                "400": _error("not a sha256", "invalid_blob_id"),
                "401": _UNAUTHORIZED,
                "404": _error("no such blob", "blob_not_found"),
            },
        }
    },
    "/api/v1/cache/{cache_key}": {
        "delete": {
            "operationId": "invalidateCacheEntry",
            "tags": ["image-edit"],
            "summary": "Forget one cached edit; the partition owning the key applies it",
            "parameters": [_path_param("cache_key", "the `cache_key` of an ImageResult", _SHA256)],
            "responses": {
                "202": _json(_ref("CacheInvalidation"), "invalidation enqueued"),
                "400": _error("not a sha256", "invalid_cache_key"),
                "401": _UNAUTHORIZED,
            },
        }
    },
    "/api/v1/dimensions": {
        "get": {
            "operationId": "getDimensions",
            "tags": ["dimensions"],
            "summary": "Width and height at once: cached, or a placeholder while one header fetch runs",
            "parameters": _DIMENSION_QUERY,
            "responses": {
                "200": {**_json(_ref("DimensionResult"), "the size"),
                        "headers": {"X-Dimension-Source": {"schema": _STR}, "Server-Timing": {"schema": _STR}}},
                "400": _error("missing or malformed parameters", "missing_parameter", "invalid_url"),
                "401": _UNAUTHORIZED,
                "404": _error("lookup without url and nothing known", "dimension_not_found"),
                "503": _NOT_READY,
            },
        },
        "post": {
            "operationId": "postDimensions",
            "tags": ["dimensions"],
            "summary": "Measure an inline image (or look up a URL like the GET)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("DimensionRequest")}}},
            "responses": {
                "200": _json(_ref("DimensionResult"), "the size (`source: computed` for inline data)"),
                "400": _error("malformed body or image", "invalid_json", "missing_parameter", "invalid_image"),
                "401": _UNAUTHORIZED,
                "404": _error("lookup without url or data and nothing known", "dimension_not_found"),
                "413": _error("body too large", "request_too_large"),
                "503": _NOT_READY,
            },
        },
    },
    "/api/v1/dimensions/batch": {
        "post": {
            "operationId": "postDimensionsBatch",
            "tags": ["dimensions"],
            "summary": "Many images of one session and scene at once: each cached, computed, or a placeholder "
                       "while one header fetch per new URL runs",
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": _ref("DimensionBatchRequest")}}},
            "responses": {
                "200": {**_json(_ref("DimensionBatchResult"), "one DimensionResult per item, in order (an item "
                                                             "whose image is bad carries its `error`)"),
                        "headers": {"Server-Timing": {"schema": _STR}}},
                "400": _error("malformed body or item (the message names it), too many items", "invalid_json",
                              "missing_parameter", "invalid_parameter", "invalid_url", "too_many_items"),
                "401": _UNAUTHORIZED,
                "413": _error("body too large", "request_too_large"),
                "503": _NOT_READY,
            },
        }
    },
    "/api/v1/dimensions/prewarm": {
        "post": {
            "operationId": "prewarmDimensions",
            "tags": ["dimensions"],
            "summary": "Fetch the sizes of URLs ahead of use (one header fetch per URL)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("PrewarmRequest")}}},
            "responses": {
                "202": _json(_ref("PrewarmAccepted"), "fetches enqueued (URLs fetched recently are skipped)"),
                "400": _error("malformed body", "invalid_json", "invalid_request", "missing_parameter",
                              "too_many_urls", "invalid_url"),
                "401": _UNAUTHORIZED,
            },
        }
    },
    "/api/v1/stats": {
        "get": {
            "operationId": "getStats",
            "tags": ["operations"],
            "summary": "This worker's counters as JSON",
            "responses": {"200": _json(_ref("Stats"), "the counters"), "401": _UNAUTHORIZED},
        }
    },
    OPENAPI_PATH: {
        "get": {
            "operationId": "getOpenAPI",
            "tags": ["operations"],
            "summary": "This document",
            "responses": {"200": _json(_ref("OpenAPI"), "OpenAPI 3.1"), "401": _UNAUTHORIZED},
        }
    },
    "/metrics": {
        "get": {
            "operationId": "getMetrics",
            "tags": ["operations"],
            "summary": "The same counters in the Prometheus text format (never needs a token)",
            "security": _PUBLIC,
            "responses": {"200": {"description": "Prometheus text exposition 0.0.4",
                                  "content": {"text/plain": {"schema": _STR}}}},
        }
    },
    "/healthz": {
        "get": {
            "operationId": "getHealth",
            "tags": ["operations"],
            "summary": "Readiness: 200 once the worker has its partitions and recovered tables",
            "security": _PUBLIC,
            "responses": {"200": _json(_ref("Health"), "ready"), "503": _json(_ref("Health"), "starting")},
        }
    },
    "/tasks/{task_id}": {
        "get": {
            "operationId": "taskPage",
            "tags": ["pages"],
            "summary": "HTML page of a task: originals beside results, live progress",
            "parameters": [_path_param("task_id", "the task")],
            "responses": {"200": _html("the page (it polls the task API until the task is finished)"),
                          "401": _UNAUTHORIZED,
                          "404": _html("no such task (the page keeps looking for a few seconds)")},
        }
    },
    "/stats": {
        "get": {
            "operationId": "statsPage",
            "tags": ["pages"],
            "summary": "HTML page of this worker's statistics, refreshing itself",
            "responses": {"200": _html("the page"), "401": _UNAUTHORIZED},
        }
    },
    # Faust's own routes, served by every worker (web_router_enabled: table routing).
    "/": {
        "get": {
            "operationId": "faustIndex",
            "tags": ["faust"],
            "summary": "Faust's index",
            "security": _PUBLIC,
            "responses": {"200": _json(_ref("FaustIndex"), "`{\"status\": \"OK\"}`")},
        }
    },
    "/router/": {
        "get": {
            "operationId": "faustTableRoutes",
            "tags": ["faust"],
            "summary": "Which worker holds which table partitions",
            "security": _PUBLIC,
            "responses": {"200": _json(_ref("HostPartitions"), "routes of all tables")},
        }
    },
    "/router/topics": {
        "get": {
            "operationId": "faustTopicRoutes",
            "tags": ["faust"],
            "summary": "Which worker holds which partitions of external topics",
            "security": _PUBLIC,
            "responses": {"200": _json(_ref("HostPartitions"), "routes of external topics")},
        }
    },
    "/router/{name}/": {
        "get": {
            "operationId": "faustTableRoute",
            "tags": ["faust"],
            "summary": "Which worker holds which partitions of one table",
            "security": _PUBLIC,
            "parameters": [_path_param("name", "table name, e.g. `task_status`")],
            "responses": {"200": _json(_ref("HostPartitions"), "the table's routes")},
        }
    },
    "/router/{name}/{key}/": {
        "get": {
            "operationId": "faustTableKeyRoute",
            "tags": ["faust"],
            "summary": "The URL of the worker owning one key of a table",
            "security": _PUBLIC,
            "parameters": [_path_param("name", "table name"), _path_param("key", "the key")],
            "responses": {"200": _json({"type": "string"}, "worker URL"),
                          "503": {"description": "no metadata yet"}},
        }
    },
}

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
    "info": {
        "title": "imagestream",
        "version": "1.0.0",
        "summary": "Cached AI image edits (DashScope qwen-image-edit) and image dimensions on Kafka + Faust",
        "description": "Every worker serves the whole API; reads of a task or a dimension are answered by the "
                       "worker owning its partition (forwarded). Every error is "
                       '`{"error": {"code": "...", "message": "..."}}` with a 4xx/5xx status. When '
                       "`IMAGESTREAM_API_TOKEN` is set, `/api/*`, `/tasks/*` and `/stats` need "
                       "`Authorization: Bearer <token>`.",
        "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
    },
    "servers": [{"url": "/", "description": "this worker"}],
    "tags": [
        {"name": "image-edit", "description": "paid image edits, cached by pixel hash + edit"},
        {"name": "dimensions", "description": "width and height of images by URL"},
        {"name": "operations", "description": "stats, metrics, health, this document"},
        {"name": "pages", "description": "HTML for people"},
        {"name": "faust", "description": "Faust's built-in routes (table routing between workers)"},
    ],
    "security": [{"bearer": []}],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "IMAGESTREAM_API_TOKEN; needed only when it is set"},
        },
    },
}

_METHODS = ("get", "put", "post", "delete", "patch", "options", "head")


def document() -> dict[str, Any]:
    """A copy of the OpenAPI document."""
    return copy.deepcopy(_DOCUMENT)


def documented_routes(doc: dict[str, Any] | None = None) -> set[tuple[str, str]]:
    """``{("GET", "/api/v1/stats"), ...}`` of the document."""
    doc = doc or _DOCUMENT
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item if method in _METHODS}


def app_routes() -> set[tuple[str, str]]:
    """The (method, path) routes a worker serves, read from the app's aiohttp router.

    Imports the component modules the worker autodiscovers and applies Faust's
    built-in blueprints as the web server does on start; nothing is started.
    ``HEAD`` (added by Faust to every view) is left out.
    """
    from streams.app import COMPONENT_MODULES, app

    for module in COMPONENT_MODULES:
        importlib.import_module(module)
    app.web.blueprints.apply(app.web)
    routes: set[tuple[str, str]] = set()
    for route in app.web.web_app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        routes.add((route.method, route.resource.canonical))
    return routes


# --- a validator for the subset of JSON Schema used above -------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "null": (type(None),),
}


def _is_type(value: Any, kind: str) -> bool:
    if kind in ("number", "integer") and isinstance(value, bool):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES[kind])


def validate(value: Any, schema: Schema, doc: dict[str, Any] | None = None, path: str = "$") -> list[str]:
    """Problems of ``value`` against ``schema`` (empty: valid)."""
    return list(_validate(value, schema, doc or _DOCUMENT, path))


def _validate(value: Any, schema: Schema, doc: dict[str, Any], path: str) -> Iterator[str]:
    if "$ref" in schema:
        target: Any = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        yield from _validate(value, target, doc, path)
        return
    kinds = schema.get("type")
    if kinds is not None:
        allowed = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(_is_type(value, kind) for kind in allowed):
            yield f"{path}: expected {'|'.join(allowed)}, got {type(value).__name__} {value!r:.80}"
            return
    if "enum" in schema and value not in schema["enum"]:
        yield f"{path}: {value!r} not one of {schema['enum']}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            yield f"{path}: {value} < minimum {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            yield f"{path}: {value} > maximum {schema['maximum']}"
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                yield f"{path}: missing required key {key!r}"
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in properties:
                yield from _validate(item, properties[key], doc, f"{path}.{key}")
            elif isinstance(extra, dict):
                yield from _validate(item, extra, doc, f"{path}.{key}")
            elif extra is False:
                yield f"{path}: unexpected key {key!r}"
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _validate(item, schema["items"], doc, f"{path}[{index}]")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--routes"]:
        for method, path in sorted(app_routes(), key=lambda r: (r[1], r[0])):
            print(method, path)
        return 0
    if args:
        print("usage: python -m streams.openapi [--routes]", file=sys.stderr)
        return 2
    print(json.dumps(_DOCUMENT, indent=2, ensure_ascii=False))
    return 0


#: The document as served (serialised once).
DOCUMENT_JSON = json.dumps(_DOCUMENT, ensure_ascii=False)

if __name__ == "__main__":
    raise SystemExit(main())
