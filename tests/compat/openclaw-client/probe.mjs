// Drives a running pincer gateway with OpenClaw's reference client, @openclaw/gateway-client.
// Usage: node probe.mjs <ws-url> <token> <gateway-pid>
// Prints one JSON line per check and exits non-zero on the first failure.
import { GatewayClient } from "@openclaw/gateway-client";

const [url, token, pid] = process.argv.slice(2);
const events = [];
const hellos = [];
let onHello = () => {};
const client = new GatewayClient({
  url,
  token,
  minProtocol: 4,
  maxProtocol: 4,
  onHelloOk: (h) => { hellos.push(h); onHello(); },
  onConnectError: (e) => console.log(JSON.stringify({ check: "connect-error", message: String(e?.message ?? e) })),
  onEvent: (e) => events.push(e),
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, cond, ms = 20000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}
function check(name, ok, detail) {
  console.log(JSON.stringify({ check: name, ok: Boolean(ok), detail }));
  if (!ok) throw new Error(`check failed: ${name}: ${JSON.stringify(detail)}`);
}

async function chat(key, idem, text) {
  const ack = await client.request("chat.send", { sessionKey: key, message: text, idempotencyKey: idem });
  check("chat.send ack", ack.runId === idem && ack.status === "started", ack);
  await until("chat final", () => events.some((e) => e.event === "chat" && e.payload?.runId === idem && e.payload?.state === "final"));
  const fin = events.find((e) => e.event === "chat" && e.payload?.runId === idem && e.payload?.state === "final");
  check("chat final text", fin.payload.message?.content?.[0]?.text === `echo: ${text}`, fin.payload);
}

try {
  client.start();
  await until("hello-ok", () => hellos.length === 1);
  const methods = hellos[0].features?.methods ?? [];
  check("hello-ok", hellos[0].protocol === 4 && methods.includes("chat.send"), { protocol: hellos[0].protocol, methods: methods.length });

  const health = await client.request("health", {});
  check("health", health.ok === true, health);
  const status = await client.request("status", {});
  check("status", typeof status.runtimeVersion === "string", { runtimeVersion: status.runtimeVersion });
  await chat("ref-1", "ref-idem-1", "hi from the reference client");

  let unknown;
  try { await client.request("no.such.method", {}); } catch (e) { unknown = e; }
  check("unknown method", unknown && /unknown method: no\.such\.method/.test(unknown.message), String(unknown?.message));

  const agent = await client.request("agent", { message: "via agent", idempotencyKey: "ref-agent-1" }, { expectFinal: true });
  check("agent final", agent.status === "ok" && agent.result?.text === "echo: via agent", agent);

  // In-process restart: the client reconnects by itself and every advertised method is callable.
  process.kill(Number(pid), "SIGUSR1");
  await until("reconnect after SIGUSR1", () => hellos.length >= 2, 30000);
  const after = hellos[hellos.length - 1].features?.methods ?? [];
  check("same methods after restart", JSON.stringify(after) === JSON.stringify(methods), { before: methods.length, after: after.length });
  for (const m of after) {
    // gateway.restart would restart the gateway again under the probe.
    if (m === "gateway.restart") continue;
    try {
      await client.request(m, {});
    } catch (e) {
      check(`method ${m} after restart`, !/unknown method/.test(e.message), e.message);
    }
  }
  await chat("ref-2", "ref-idem-2", "after the restart");
  console.log(JSON.stringify({ check: "all", ok: true }));
} catch (e) {
  console.log(JSON.stringify({ check: "fatal", ok: false, detail: String(e?.stack ?? e) }));
  process.exitCode = 1;
} finally {
  client.stop();
}
