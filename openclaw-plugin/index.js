// OpenClaw plugin entry for synthesis-bridge: registers the `synthesis-bridge` service (runs
// `synthesis-bridge serve` for as long as the gateway runs, see bridge-process.js) and the
// `synthesis` model provider (model `claude-code`, OpenAI-compatible, pointing at that bridge).
// Plain JavaScript, no build step and no dependencies: OpenClaw loads this file as it is.
//
// How the provider reaches the bridge (observed with OpenClaw 2026.9.6):
// - the model row is static, in openclaw.plugin.json's `modelCatalog` (so `openclaw config set
//   agents.defaults.model synthesis/claude-code` and `openclaw models list` know it in any
//   process, gateway running or not);
// - the credential is the env var SYNTHESIS_BRIDGE_OPENCLAW_KEY (declared in the manifest's
//   `setup.providers` and `envVars` below), which the service sets in the gateway process to
//   the key it generated (without it: "No API key found for provider synthesis");
// - `resolveDynamicModel` resolves the model in any process (`config set` checks the ref);
// - `prepareRuntimeAuth` runs before each model call and swaps in the live base URL (the
//   bridge's port is picked at start) and key.
// OpenClaw may load this module more than once in one process (one instance per registry
// generation), so the running bridge is kept on `globalThis`, not in a module variable.

import fs from "node:fs";
import path from "node:path";
import { BridgeProcess, findBinary, serveArgs, writeApiKey } from "./bridge-process.js";

const PLUGIN_ID = "synthesis-bridge";
/** The provider; its one model row (`claude-code`, openai-completions, the compat flags of
 * docs/OPENCLAW.md) is in openclaw.plugin.json's `modelCatalog`. */
const PROVIDER_ID = "synthesis";
/** The provider's credential as OpenClaw looks it up (the service sets it in the gateway). */
const KEY_ENV = "SYNTHESIS_BRIDGE_OPENCLAW_KEY";
const MANIFEST_PROVIDER = JSON.parse(
  fs.readFileSync(new URL("./openclaw.plugin.json", import.meta.url), "utf8"),
).modelCatalog.providers.synthesis;
const MODEL_ROW = MANIFEST_PROVIDER.models[0];
const MODEL_ID = MODEL_ROW.id;
const NOT_RUNNING =
  "synthesis-bridge is not running in this process: model synthesis/claude-code is served by the gateway's synthesis-bridge service; send the turn through the gateway (not `openclaw agent --local`), and if it still fails see the gateway log and `openclaw plugins inspect synthesis-bridge --runtime`";
const SHARED = Symbol.for("synthesis-bridge.openclaw-plugin");

/** Process-wide: the bridge the service started, and its API key. */
function shared() {
  globalThis[SHARED] ??= { bridge: null, apiKey: null };
  return globalThis[SHARED];
}

export default {
  id: PLUGIN_ID,
  name: "synthesis-bridge",
  description:
    "Runs synthesis-bridge with the gateway and registers it as the `synthesis` provider (Claude Code as an OpenAI-compatible model)",
  register(api) {
    api.registerProvider({
      id: PROVIDER_ID,
      label: "Claude Code (synthesis-bridge)",
      docsPath: "/providers/models",
      envVars: [KEY_ENV],
      auth: [],
      // Model resolution in any process (`openclaw config set agents.defaults.model` checks the
      // ref); the row matches the manifest's. The base URL is the placeholder of the manifest
      // until prepareRuntimeAuth supplies the live one.
      resolveDynamicModel: (ctx) =>
        ctx.modelId === MODEL_ID
          ? {
              ...MODEL_ROW,
              provider: PROVIDER_ID,
              api: "openai-completions",
              baseUrl: shared().bridge?.endpoint?.baseUrl ?? MANIFEST_PROVIDER.baseUrl,
            }
          : undefined,
      // The key exists only in a gateway whose service started the bridge: elsewhere (e.g.
      // `openclaw agent --local`) OpenClaw stops earlier, with "No API key found for provider
      // synthesis"; this covers a gateway whose service is not running.
      prepareRuntimeAuth: async () => {
        const { bridge, apiKey } = shared();
        if (!bridge) throw new Error(NOT_RUNNING);
        const endpoint = await bridge.ready();
        return { apiKey, baseUrl: endpoint.baseUrl };
      },
    });

    if (api.registrationMode !== "full") return;

    /** The bridge this service instance started (stop() stops that one, not a successor). */
    let mine = null;
    api.registerService({
      id: PLUGIN_ID,
      // A change to the plugin's settings restarts the service, hence the bridge.
      reload: { configPrefixes: [`plugins.entries.${PLUGIN_ID}.config`] },
      async start(ctx) {
        const logger = ctx.logger ?? api.logger;
        const config = ctx.config?.plugins?.entries?.[PLUGIN_ID]?.config ?? api.pluginConfig ?? {};
        const state = shared();
        if (state.bridge) await state.bridge.stop();
        const binary = findBinary(config.binary);
        const stateDir = path.resolve(config.stateDir ?? path.join(ctx.stateDir, "synthesis-bridge"));
        const key = writeApiKey(stateDir);
        // Claude works where OpenClaw's agent works, unless the config names a workspace
        // (OpenClaw creates its agent workspace lazily: make sure it exists).
        const workspace = config.workspace ?? ctx.workspaceDir;
        if (!config.workspace && workspace) fs.mkdirSync(workspace, { recursive: true });
        const bridge = new BridgeProcess({
          binary,
          args: serveArgs({ ...config, workspace }, { stateDir, apiKeyFile: key.file, parentPid: process.pid }),
          port: config.port ?? 0,
          logger,
          // The bridge reads its key from the file; the variable is for OpenClaw alone.
          env: Object.fromEntries(Object.entries(process.env).filter(([name]) => name !== KEY_ENV)),
        });
        state.bridge = bridge;
        state.apiKey = key.key;
        mine = bridge;
        process.env[KEY_ENV] = key.key;
        try {
          const endpoint = await bridge.start();
          logger.info?.(`synthesis-bridge: provider ${PROVIDER_ID} at ${endpoint.baseUrl}`);
        } catch (error) {
          if (state.bridge === bridge) state.bridge = null;
          throw error;
        }
      },
      async stop() {
        const state = shared();
        const running = mine;
        mine = null;
        if (state.bridge === running) state.bridge = null;
        await running?.stop();
      },
    });
  },
};
