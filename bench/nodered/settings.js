// Node-RED settings for `make bench-peers` (bench/peers.py). Node-RED runs headless: no
// editor and no HTTP listener at all (both roots false), so it needs no free port and
// spends no CPU on anything but the flow. bench/peers.py copies one of the flow files of
// this folder into a fresh user directory as flows.json and sets the environment
// variables the flow's ${...} fields name (broker port, client id, VictoriaMetrics URL).
module.exports = {
    flowFile: "flows.json",
    // Fixed, so a run never stops to ask for one or writes a generated key into the
    // user directory; the flows hold no secrets (VictoriaMetrics needs no token).
    credentialSecret: "stadtpuls-bench",
    httpAdminRoot: false,
    httpNodeRoot: false,
    disableEditor: true,
    // Nothing of these may reach the network: the machine has only loopback.
    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    telemetry: { enabled: false, updateNotification: false },
    externalModules: {
        autoInstall: false,
        palette: { allowInstall: false, allowUpdate: false, allowUpload: false },
        modules: { allowInstall: false },
    },
    functionExternalModules: false,
    editorTheme: { projects: { enabled: false } },
    logging: { console: { level: "warn", metrics: false, audit: false } },
};
