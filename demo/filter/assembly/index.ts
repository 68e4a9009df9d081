// csi-wasm demo filter: an Envoy proxy-wasm HTTP filter that adds the
// response header "x-csi-wasm: hello" to every response passing through it.
//
// Built with AssemblyScript 0.14 and the @solo-io/proxy-runtime SDK; see
// ../README.md and ../build.sh.

// Re-export the proxy-wasm ABI entry points (proxy_on_*, malloc, ...) so the
// host can drive the module.
export * from "@solo-io/proxy-runtime/proxy";

import {
  Context,
  FilterHeadersStatusValues,
  RootContext,
  registerRootContext,
  stream_context,
} from "@solo-io/proxy-runtime";

const HEADER_NAME = "x-csi-wasm";
const HEADER_VALUE = "hello";

// One root context per plugin instance; it creates a stream context for each
// HTTP request/response pair.
class AddHeaderRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new AddHeader(context_id, this);
  }

  // This filter takes no configuration. Not calling the SDK's default
  // onConfigure also sidesteps a bug in @solo-io/proxy-runtime 0.1.8, which
  // passes configuration_size where proxy_get_buffer_bytes expects a pointer
  // for the returned size.
  onConfigure(_configuration_size: u32): bool {
    return true;
  }
}

class AddHeader extends Context {
  constructor(context_id: u32, root_context: AddHeaderRoot) {
    super(context_id, root_context);
  }

  onResponseHeaders(_header_count: u32, _end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add(HEADER_NAME, HEADER_VALUE);
    return FilterHeadersStatusValues.Continue;
  }
}

// "add_header" is the root_id to put in Envoy's wasm filter configuration.
registerRootContext((context_id: u32): RootContext => {
  return new AddHeaderRoot(context_id);
}, "add_header");
