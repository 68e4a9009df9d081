// Smoke test for add-header.wasm: loads the module in Node's WebAssembly
// engine with a tiny mock proxy-wasm host, drives it through the calls Envoy
// makes for one HTTP stream, and checks that the filter adds the response
// header "x-csi-wasm: hello".
//
// Usage: node smoke-test.mjs [path/to/add-header.wasm]
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const wasmPath = process.argv[2] ?? join(here, "add-header.wasm");

const OK = 0;
const NOT_FOUND = 1;
const RESPONSE_HEADERS = 2; // proxy-wasm HeaderMapType
const ROOT_ID = "add_header";

const added = [];
const logs = [];
let instance;

const mem = () => new Uint8Array(instance.exports.memory.buffer);
const view = () => new DataView(instance.exports.memory.buffer);
const str = (ptr, len) => new TextDecoder().decode(mem().slice(ptr, ptr + len));

// Copy bytes into guest memory allocated with the module's malloc export and
// store (pointer, size) where the guest asked for them.
function returnBytes(bytes, ptrPtr, sizePtr) {
  const ptr = instance.exports.malloc(bytes.length);
  mem().set(bytes, ptr);
  view().setUint32(ptrPtr, ptr, true);
  view().setUint32(sizePtr, bytes.length, true);
}

const host = {
  env: {
    proxy_log(level, ptr, len) {
      logs.push(`[${level}] ${str(ptr, len)}`);
      return OK;
    },
    proxy_get_property(pathPtr, pathLen, valuePtrPtr, valueSizePtr) {
      const path = str(pathPtr, pathLen);
      if (path !== "plugin_root_id") return NOT_FOUND;
      returnBytes(new TextEncoder().encode(ROOT_ID), valuePtrPtr, valueSizePtr);
      return OK;
    },
    proxy_get_buffer_bytes(_type, _start, _length, ptrPtr, sizePtr) {
      returnBytes(new Uint8Array(0), ptrPtr, sizePtr);
      return OK;
    },
    proxy_set_effective_context(_contextId) {
      return OK;
    },
    proxy_add_header_map_value(type, keyPtr, keyLen, valuePtr, valueLen) {
      added.push([type, str(keyPtr, keyLen), str(valuePtr, valueLen)]);
      return OK;
    },
  },
  wasi_unstable: {
    proc_exit(code) {
      throw new Error(`module called proc_exit(${code}); log:\n${logs.join("\n")}`);
    },
  },
};

function fail(message) {
  console.error(`smoke-test: FAIL: ${message}`);
  process.exit(1);
}

const module = await WebAssembly.compile(readFileSync(wasmPath));
const imports = WebAssembly.Module.imports(module).map((i) => `${i.module}.${i.name}`);
for (const name of imports) {
  const [mod, fn] = name.split(".");
  if (!host[mod]?.[fn]) fail(`module imports ${name}, which the mock host lacks`);
}
instance = await WebAssembly.instantiate(module, host);

const e = instance.exports;
if (typeof e.proxy_abi_version_0_2_0 !== "function") fail("no proxy_abi_version_0_2_0 export");

// Root context 1 (one per plugin), then stream context 2 for one request.
e.proxy_on_context_create(1, 0);
if (e.proxy_on_vm_start(1, 0) !== 1) fail("proxy_on_vm_start returned false");
if (e.proxy_on_configure(1, 0) !== 1) fail("proxy_on_configure returned false");
e.proxy_on_context_create(2, 1);
if (e.proxy_on_request_headers(2, 0, 0) !== 0) fail("request headers: not Continue");
if (added.length !== 0) fail(`request headers modified: ${JSON.stringify(added)}`);
if (e.proxy_on_response_headers(2, 3, 0) !== 0) fail("response headers: not Continue");
e.proxy_on_done(2);
e.proxy_on_delete(2);

const want = JSON.stringify([[RESPONSE_HEADERS, "x-csi-wasm", "hello"]]);
if (JSON.stringify(added) !== want) fail(`added headers ${JSON.stringify(added)}, want ${want}`);
console.log(`smoke-test: ok: ${wasmPath} adds response header x-csi-wasm: hello`);
