// Drives pincer's web chat page (GET /) in a real headless Chromium (Debian's /usr/bin/chromium)
// through playwright-core: enter the token, chat, restart the gateway (SIGUSR1), see the page
// reconnect and reload its history, chat again, save a screenshot.
// Usage: node drive.mjs <http-url> <token> <gateway-pid> <screenshot-path>
// Prints one JSON line per check and exits non-zero on the first failure. Every wait is bounded;
// nothing sleeps: waits are on the page's DOM and on the WebSocket frames Chromium reports.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";

const [url, token, pid, screenshot] = process.argv.slice(2);
const CHROMIUM = "/usr/bin/chromium";
const WAIT = 30000;

function check(name, ok, detail) {
  console.log(JSON.stringify({ check: name, ok: Boolean(ok), detail }));
  if (!ok) throw new Error(`check failed: ${name}: ${JSON.stringify(detail)}`);
}

// Protocol facts, as Chromium saw them on the page's sockets.
const sockets = [];
const chatEvents = [];
let hellos = 0;

// Records every change of the connection indicator (#dot's class, #status-text), so a
// reconnect is seen as the sequence connected → not connected → connected, however briefly
// the page stayed disconnected.
function recordStatus() {
  window.__pincerStatus = [];
  // How many times the page went into the connected state.
  window.__pincerConnects = () =>
    window.__pincerStatus.filter((s, i, all) => s.state === "connected" && (i === 0 || all[i - 1].state !== "connected")).length;
  document.addEventListener("DOMContentLoaded", () => {
    const dot = document.getElementById("dot");
    const text = document.getElementById("status-text");
    const rec = () => {
      const last = window.__pincerStatus[window.__pincerStatus.length - 1];
      const now = { state: dot.className, text: text.textContent };
      if (!last || last.state !== now.state || last.text !== now.text) window.__pincerStatus.push(now);
    };
    rec();
    new MutationObserver(rec).observe(document.getElementById("status"), {
      subtree: true, childList: true, characterData: true, attributes: true,
    });
  });
}

// Send a message from the composer and wait for its streamed reply: the `chat` events on the
// socket (deltas, then final) and the reply's bubble in the log.
async function chat(page, text) {
  const reply = `echo: ${text}`;
  const ws = sockets[sockets.length - 1];
  const final = ws.waitForEvent("framereceived", {
    predicate: ({ payload }) => {
      const f = parse(payload);
      return f?.event === "chat" && f.payload?.state === "final" && f.payload.message?.content?.[0]?.text === reply;
    },
    timeout: WAIT,
  });
  final.catch(() => {});
  await page.locator("#input").fill(text);
  await page.locator("#input").press("Enter");
  await page.locator("#log .msg.user > .body", { hasText: exact(text) }).waitFor({ timeout: WAIT });
  // The final event clears aria-busy on the reply's bubble.
  const bubble = page.locator("#log .msg.assistant:not([aria-busy]) > .body", { hasText: exact(reply) });
  await bubble.waitFor({ timeout: WAIT });
  await page.locator("#activity").waitFor({ state: "hidden", timeout: WAIT });
  const runId = parse((await final).payload).payload.runId;
  const deltas = chatEvents.filter((p) => p.runId === runId && p.state === "delta");
  check("streamed reply", deltas.length > 0 && deltas.map((p) => p.deltaText).join("") === reply, {
    message: text, runId, deltas: deltas.length, shown: await bubble.textContent(),
  });
}

const parse = (s) => { try { return JSON.parse(s); } catch { return undefined; } };
const exact = (s) => new RegExp(`^${s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`);

// The log's contents, user and assistant bubbles and notes, in order.
const logEntries = (page) =>
  page.locator("#log > *").evaluateAll((els) => els.map((e) => `${e.className}: ${e.querySelector(".body")?.textContent ?? e.textContent}`));

let browser, page;
try {
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"], timeout: WAIT });
  check("chromium", true, { version: browser.version() });
  page = await browser.newPage({ viewport: { width: 900, height: 640 } });
  page.setDefaultTimeout(WAIT);
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("websocket", (ws) => {
    sockets.push(ws);
    ws.on("framereceived", ({ payload }) => {
      const f = parse(payload);
      if (!f) return;
      if (f.type === "res" && f.ok && f.payload?.type === "hello-ok") hellos++;
      if (f.type === "event" && f.event === "chat") chatEvents.push(f.payload);
    });
  });
  await page.addInitScript(recordStatus);

  // A fresh profile has no stored token: the page asks for one.
  await page.goto(url, { timeout: WAIT });
  await page.locator("#auth").waitFor({ state: "visible", timeout: WAIT });
  check("token prompt", (await page.locator("#status-text").textContent()).includes("token needed"), await page.locator("#status-text").textContent());

  // A wrong token is refused, and the page asks again with the server's message.
  await page.locator("#token").fill("not-the-token");
  await page.locator("#auth button[type=submit]").click();
  await page.locator("#auth-err", { hasText: /\S/ }).waitFor({ timeout: WAIT });
  await page.locator("#auth").waitFor({ state: "visible", timeout: WAIT });
  check("wrong token refused", true, await page.locator("#auth-err").textContent());

  await page.locator("#token").fill(token);
  await page.locator("#auth button[type=submit]").click();
  await page.locator("#dot.connected").waitFor({ state: "attached", timeout: WAIT });
  await page.locator("#auth").waitFor({ state: "hidden", timeout: WAIT });
  await page.locator("#log:not([aria-busy])").waitFor({ state: "attached", timeout: WAIT });
  check("connected", hellos === 1, { status: await page.locator("#status-text").textContent(), session: await page.locator("#sess").textContent() });

  await chat(page, "hello from chromium");

  // In-process restart: the page gets `shutdown`, its socket closes (1012), and it reconnects
  // by itself with a new socket, then reloads the history.
  const first = sockets[sockets.length - 1];
  process.kill(Number(pid), "SIGUSR1");
  if (!first.isClosed()) await first.waitForEvent("close", { timeout: WAIT });
  await page.waitForFunction(
    () => window.__pincerConnects() >= 2 && document.getElementById("dot").className === "connected"
      && !document.getElementById("log").hasAttribute("aria-busy"),
    undefined,
    { timeout: WAIT },
  );
  const statuses = await page.evaluate(() => window.__pincerStatus.map((s) => `${s.state}: ${s.text}`));
  const afterFirst = statuses.slice(statuses.findIndex((s) => s.startsWith("connected:")) + 1);
  check("reconnected after SIGUSR1", hellos === 2 && sockets.length >= 3 && afterFirst.some((s) => !s.startsWith("connected:")), {
    sockets: sockets.length, hellos, statuses,
  });
  // chat.history for the page's session key returns the first exchange, and it alone is shown.
  const history = await logEntries(page);
  const expected = ["msg user: hello from chromium", "msg assistant: echo: hello from chromium"];
  check("history reloaded", JSON.stringify(history) === JSON.stringify(expected), { expected, shown: history });

  await chat(page, "after the restart");
  const log = await logEntries(page);
  check("conversation", log.length === 4 && log[2] === "msg user: after the restart" && log[3] === "msg assistant: echo: after the restart", log);
  check("no page errors", pageErrors.length === 0, pageErrors);

  mkdirSync(dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
  check("screenshot", true, screenshot);
  console.log(JSON.stringify({ check: "all", ok: true }));
} catch (e) {
  console.log(JSON.stringify({ check: "fatal", ok: false, detail: String(e?.stack ?? e) }));
  process.exitCode = 1;
  // The page as it was when the check failed, for the CI artifact.
  try {
    mkdirSync(dirname(screenshot), { recursive: true });
    await page?.screenshot({ path: screenshot, fullPage: true, timeout: 5000 });
  } catch {}
} finally {
  await browser?.close();
}
