// The Sluice portal: one page, hash routes, every number from the REST API on this origin
// (Envoy's gRPC-JSON transcoder in front of the services). No build step, no dependencies.

const view = document.getElementById("view");
const TOKEN_KEY = "sluice-admin-token";
const NOT_RUNNING = "no such REST path";

// ---- helpers -----------------------------------------------------------------------------

// Deployment names are the user's (`constructor`, `toString` and `endpoint` are valid): a
// map keyed by them is a Map, or read with own() from JSON, never by a plain lookup, which
// would find Object.prototype's members.
const own = (map, key, otherwise) => (map && Object.hasOwn(map, key) ? map[key] : otherwise);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const authText = (mode) => own({ Key: "key", AMLToken: "aml_token", AADToken: "aad_token" }, mode, String(mode || ""));
const enc = encodeURIComponent;

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.notRunning = status === 404 && String(body && body.message).startsWith(NOT_RUNNING);
  }
}

// Each route() is a new generation. An answer that arrives after the page that asked for it
// was left (a slow list, then a click to a job) never resolves: that page's code stops where
// it waits instead of drawing over the page now shown.
let generation = 0;

async function api(method, path, body) {
  const asked = generation;
  const headers = { authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const answer = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await answer.text();
  if (asked !== generation) return new Promise(() => {});
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : {}; } catch { parsed = { message: text }; }
  if (answer.status === 401) { signOut("The token was refused; sign in again."); }
  if (!answer.ok) throw new ApiError(answer.status, parsed);
  return parsed;
}

function problem(err, what) {
  if (err.notRunning) return `<p class="muted" role="status">${esc(what)}: this service does not run on this platform.</p>`;
  return `<p class="error" role="alert">${esc(what)}: ${esc(err.message)}</p>`;
}

const isoAgo = (seconds) => new Date(Date.now() - seconds * 1000).toISOString();
const trafficText = (t) => Object.entries(t || {}).map(([k, v]) => `${k} ${v}%`).join(", ") || "none";

// ---- sign in -----------------------------------------------------------------------------

const form = document.getElementById("sign-in");
function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById("sign-in-error").textContent = message || "";
  route();
}
form.addEventListener("submit", async (e) => {
  e.preventDefault();
  const token = document.getElementById("token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    await api("GET", "/onlineEndpoints?count=1");
    document.getElementById("sign-in-error").textContent = "";
    if (!location.hash || location.hash === "#/") location.hash = "#/endpoints";
    route();
  } catch (err) {
    sessionStorage.removeItem(TOKEN_KEY);
    document.getElementById("sign-in-error").textContent = `Sign-in failed: ${err.message}`;
  }
});
document.getElementById("sign-out").addEventListener("click", () => signOut());

// ---- router ------------------------------------------------------------------------------

let timers = [];
function every(ms, fn) { timers.push(setInterval(fn, ms)); }

async function route() {
  generation += 1;
  timers.forEach(clearInterval);
  timers = [];
  const signedIn = Boolean(sessionStorage.getItem(TOKEN_KEY));
  form.hidden = signedIn;
  document.getElementById("sign-out").hidden = !signedIn;
  if (!signedIn) { view.innerHTML = ""; document.getElementById("token").focus(); return; }
  const parts = (location.hash.replace(/^#\/?/, "") || "endpoints").split("/").map(decodeURIComponent);
  const pages = { endpoints: parts[1] ? endpointPage : endpointsPage, batch: batchPage, jobs: parts[1] ? jobPage : jobsPage, assets: assetsPage };
  const page = own(pages, parts[0], endpointsPage);
  try { await page(...parts.slice(1)); } catch (err) { view.innerHTML = problem(err, "Could not load the page"); }
}
window.addEventListener("hashchange", route);

// ---- endpoints ---------------------------------------------------------------------------

async function endpointsPage() {
  view.innerHTML = `<h1>Online endpoints</h1><p class="muted" role="status">Loading…</p>`;
  const endpoints = [];
  let link = "/onlineEndpoints?count=1000";
  while (link) {
    const page = await api("GET", link);
    endpoints.push(...page.value);
    link = page.nextLink;
  }
  const rows = endpoints.map((e) => `<tr>
      <td><a href="#/endpoints/${enc(e.name)}">${esc(e.name)}</a></td>
      <td class="state-${esc(e.properties.provisioningState)}">${esc(e.properties.provisioningState)}</td>
      <td>${esc(authText(e.properties.authMode))}</td>
      <td><code>${esc(e.properties.scoringUri)}</code></td>
      <td>${esc(trafficText(e.properties.traffic))}</td></tr>`).join("");
  view.innerHTML = `<h1>Online endpoints</h1>
    <p class="muted">${endpoints.length} endpoint(s). Create them with <code>sluice online-endpoint create</code> or <code>PUT /onlineEndpoints/{name}</code>.</p>
    <div class="table-wrap"><table id="endpoints"><thead><tr><th scope="col">Name</th><th scope="col">State</th><th scope="col">Auth mode</th><th scope="col">Scoring URI</th><th scope="col">Traffic</th></tr></thead>
    <tbody>${rows || `<tr><td colspan="5" class="muted">No endpoints yet.</td></tr>`}</tbody></table></div>`;
}

const TABS = ["deployments", "keys", "test", "logs", "metrics"];

async function endpointPage(name, tab = "deployments") {
  const ep = await api("GET", `/onlineEndpoints/${enc(name)}`);
  view.innerHTML = `<p><a href="#/endpoints">← Endpoints</a></p>
    <h1>${esc(name)}</h1>
    <p><span class="state-${esc(ep.properties.provisioningState)}">${esc(ep.properties.provisioningState)}</span>
      · auth ${esc(authText(ep.properties.authMode))} · <code>${esc(ep.properties.scoringUri)}</code></p>
    <div role="tablist" aria-label="endpoint">${TABS.map((t) => `<button role="tab" aria-selected="${t === tab}" data-tab="${t}">${t[0].toUpperCase() + t.slice(1)}</button>`).join("")}</div>
    <section id="tab" role="tabpanel" aria-label="${esc(tab)}"></section>`;
  view.querySelectorAll("[role=tab]").forEach((b) => b.addEventListener("click", () => { location.hash = `#/endpoints/${enc(name)}/${b.dataset.tab}`; }));
  const panel = document.getElementById("tab");
  const render = own({ deployments: deploymentsTab, keys: keysTab, test: testTab, logs: logsTab, metrics: metricsTab }, tab, deploymentsTab);
  await render(panel, ep);
}

// Moving one share spreads the rest over the others in proportion to what they had (evenly
// when they had nothing), rounded so the total stays exactly 100. Shares: a Map name -> %.
function rebalance(shares, moved, value) {
  const others = [...shares.keys()].filter((n) => n !== moved);
  if (!others.length) return new Map([[moved, 100]]);
  const result = new Map([...shares.keys()].map((n) => [n, n === moved ? value : 0]));
  const rest = 100 - value;
  const had = others.reduce((s, n) => s + shares.get(n), 0);
  const raw = others.map((n) => [n, had ? (shares.get(n) * rest) / had : rest / others.length]);
  let left = rest;
  raw.forEach(([n, v]) => { result.set(n, Math.floor(v)); left -= Math.floor(v); });
  raw.sort((a, b) => (b[1] % 1) - (a[1] % 1)).forEach(([n]) => { if (left > 0) { result.set(n, result.get(n) + 1); left -= 1; } });
  return result;
}

async function deploymentsTab(panel, ep) {
  const name = ep.name;
  const { value: deployments } = await api("GET", `/onlineEndpoints/${enc(name)}/deployments`);
  let shares = new Map(deployments.map((d) => [d.name, Number(own(ep.properties.traffic, d.name, 0))]));
  const rows = deployments.map((d) => `<tr><td>${esc(d.name)}</td>
      <td class="state-${esc(d.properties.provisioningState)}">${esc(d.properties.provisioningState)}</td>
      <td>${esc(d.properties.instanceType)}</td><td>${esc(d.sku.capacity)}</td>
      <td>${d.properties.instances.filter((i) => i.ready).length} / ${d.properties.instances.length}</td>
      <td>${esc(d.properties.statusMessage)}</td></tr>`).join("");
  panel.innerHTML = `<h2>Deployments</h2>
    <div class="table-wrap"><table><thead><tr><th scope="col">Name</th><th scope="col">State</th><th scope="col">Instance type</th><th scope="col">Instances</th><th scope="col">Ready</th><th scope="col">Status</th></tr></thead>
    <tbody>${rows || `<tr><td colspan="6" class="muted">No deployments yet.</td></tr>`}</tbody></table></div>
    <h2 id="traffic-title">Traffic</h2>
    <div role="group" aria-labelledby="traffic-title" id="sliders">${deployments.map((d) => `<div class="slider-row">
      <label for="share-${esc(d.name)}">${esc(d.name)}</label>
      <input type="range" id="share-${esc(d.name)}" data-name="${esc(d.name)}" min="0" max="100" step="1" value="${shares.get(d.name)}">
      <output id="out-${esc(d.name)}">${shares.get(d.name)}%</output></div>`).join("")}</div>
    <div class="row"><button id="apply-traffic" type="button" ${deployments.length ? "" : "disabled"}>Apply traffic</button>
      <span id="traffic-status" role="status" aria-live="polite"></span></div>
    <h2>Mirror traffic</h2>
    <p class="muted">Copies of live requests (at most 50%), answers discarded.</p>
    ${deployments.map((d) => `<div class="row"><label for="mirror-${esc(d.name)}">${esc(d.name)}</label>
      <input type="number" id="mirror-${esc(d.name)}" data-name="${esc(d.name)}" min="0" max="50" value="${Number(own(ep.properties.mirrorTraffic, d.name, 0))}"> %</div>`).join("")}
    <div class="row"><button id="apply-mirror" type="button" class="secondary" ${deployments.length ? "" : "disabled"}>Apply mirror</button>
      <span id="mirror-status" role="status" aria-live="polite"></span></div>`;
  const sliders = [...panel.querySelectorAll("input[type=range]")];
  sliders.forEach((s) => s.addEventListener("input", () => {
    shares = rebalance(shares, s.dataset.name, Number(s.value));
    sliders.forEach((o) => { const v = shares.get(o.dataset.name); o.value = v; o.setAttribute("aria-valuetext", `${v} percent`); document.getElementById(`out-${o.dataset.name}`).textContent = `${v}%`; });
  }));
  panel.querySelector("#apply-traffic").addEventListener("click", () => applyShares(name, "setTraffic", shares, "#traffic-status"));
  panel.querySelector("#apply-mirror").addEventListener("click", () => {
    const mirror = new Map([...panel.querySelectorAll("input[type=number]")].map((i) => [i.dataset.name, Number(i.value)]));
    applyShares(name, "setMirrorTraffic", mirror, "#mirror-status");
  });
}

// "applying…" until the gateway serves the endpoint's new version (properties.appliedEtag,
// recorded by the traffic controller when Envoy ACKs the configuration, reaches its etag).
async function applyShares(name, verb, shares, statusSel) {
  const status = document.querySelector(statusSel);
  status.className = "";
  status.textContent = "applying…";
  try {
    const updated = await api("POST", `/onlineEndpoints/${enc(name)}/${verb}`, { traffic: Object.fromEntries(shares) });
    const want = Number(updated.etag);
    const deadline = Date.now() + 30000;
    while (Date.now() < deadline) {
      const now = await api("GET", `/onlineEndpoints/${enc(name)}`);
      if (Number(now.properties.appliedEtag) >= want) {
        status.className = "ok";
        status.textContent = `applied: Envoy serves ${trafficText(verb === "setTraffic" ? now.properties.traffic : now.properties.mirrorTraffic)}`;
        return;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
    status.className = "error";
    status.textContent = "stored, but the gateway has not confirmed it within 30 s";
  } catch (err) {
    status.className = "error";
    status.textContent = `not applied: ${err.message}`;
  }
}

async function credentials(ep) {
  if (ep.properties.authMode === "AMLToken") return (await api("POST", `/onlineEndpoints/${enc(ep.name)}/token`)).accessToken;
  return (await api("POST", `/onlineEndpoints/${enc(ep.name)}/listKeys`)).primaryKey;
}

async function keysTab(panel, ep) {
  const name = ep.name;
  if (ep.properties.authMode === "AMLToken") {
    const t = await api("POST", `/onlineEndpoints/${enc(name)}/token`);
    panel.innerHTML = `<h2>Token</h2><p class="secret">${esc(t.accessToken)}</p><p class="muted">Expires ${esc(new Date(t.expiryTimeUtc * 1000).toISOString())}.</p>`;
    return;
  }
  const keys = await api("POST", `/onlineEndpoints/${enc(name)}/listKeys`);
  const row = (label, value, type) => `<tr><th scope="row">${label}</th>
      <td class="secret" data-secret="${esc(value)}" aria-label="${label}">••••••••</td>
      <td><button type="button" class="secondary" data-show>Show</button>
      <button type="button" class="secondary" data-copy>Copy</button>
      <button type="button" class="secondary" data-regen="${type}">Regenerate</button></td></tr>`;
  panel.innerHTML = `<h2>Keys</h2><div class="table-wrap"><table>
    ${row("Primary key", keys.primaryKey, "Primary")}${row("Secondary key", keys.secondaryKey, "Secondary")}</table></div>
    <p id="keys-status" role="status" aria-live="polite"></p>
    <dialog id="regen-confirm" aria-labelledby="regen-title" aria-describedby="regen-text">
      <h2 id="regen-title"></h2><p id="regen-text"></p>
      <form method="dialog" class="row"><button id="regen-yes" value="regenerate"></button>
        <button value="cancel" class="secondary" autofocus>Cancel</button></form>
    </dialog>`;
  const status = panel.querySelector("#keys-status");
  panel.querySelectorAll("[data-show]").forEach((b) => b.addEventListener("click", () => {
    const cell = b.closest("tr").querySelector(".secret");
    const shown = b.textContent === "Hide";
    cell.textContent = shown ? "••••••••" : cell.dataset.secret;
    b.textContent = shown ? "Show" : "Hide";
  }));
  panel.querySelectorAll("[data-copy]").forEach((b) => b.addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(b.closest("tr").querySelector(".secret").dataset.secret); status.textContent = "Copied."; }
    catch { status.textContent = "The browser refused the clipboard; use Show and copy it by hand."; }
  }));
  // A key in use stops working the moment it is regenerated: ask first (Cancel is the
  // default button, Esc cancels too), and say so when the call fails.
  const confirmBox = panel.querySelector("#regen-confirm");
  let asked = "";
  panel.querySelectorAll("[data-regen]").forEach((b) => b.addEventListener("click", () => {
    asked = b.dataset.regen;
    const key = `${asked.toLowerCase()} key`;
    const other = asked === "Primary" ? "secondary" : "primary";
    confirmBox.querySelector("#regen-title").textContent = `Regenerate the ${key}?`;
    confirmBox.querySelector("#regen-text").textContent = `Every client that sends the current ${key} gets 401 from the moment it changes until it uses the new one. Move them to the ${other} key first.`;
    confirmBox.querySelector("#regen-yes").textContent = `Regenerate ${key}`;
    confirmBox.returnValue = "";
    confirmBox.showModal();
  }));
  confirmBox.addEventListener("close", async () => {
    if (confirmBox.returnValue !== "regenerate") return;
    const key = `${asked.toLowerCase()} key`;
    status.className = "";
    status.textContent = `Regenerating the ${key}…`;
    try {
      await api("POST", `/onlineEndpoints/${enc(name)}/regenerateKeys`, { keyType: asked });
    } catch (err) {
      status.className = "error";
      status.textContent = `The ${key} was not regenerated: ${err.message}`;
      return;
    }
    try {
      await keysTab(panel, ep);
      panel.querySelector("#keys-status").textContent = `Regenerated the ${key}.`;
    } catch (err) {
      status.className = "error";
      status.textContent = `The ${key} was regenerated, but the keys could not be read again: ${err.message}`;
    }
  });
}

async function testTab(panel, ep) {
  const name = ep.name;
  const { value: deployments } = await api("GET", `/onlineEndpoints/${enc(name)}/deployments`);
  panel.innerHTML = `<h2>Test</h2>
    <label for="test-body">Request body (JSON)</label>
    <textarea id="test-body" spellcheck="false">{"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]}</textarea>
    <div class="row"><label for="test-deployment">Deployment</label>
      <select id="test-deployment"><option value="">by traffic</option>${deployments.map((d) => `<option>${esc(d.name)}</option>`).join("")}</select>
      <button id="test-send" type="button">Send</button></div>
    <p id="test-status" role="status" aria-live="polite"></p><pre id="test-answer" aria-label="answer"></pre>`;
  panel.querySelector("#test-send").addEventListener("click", async () => {
    const status = panel.querySelector("#test-status");
    const body = panel.querySelector("#test-body").value;
    try { JSON.parse(body); } catch (err) { status.className = "error"; status.textContent = `Not JSON: ${err.message}`; return; }
    const headers = { "content-type": "application/json", authorization: `Bearer ${await credentials(ep)}` };
    const pin = panel.querySelector("#test-deployment").value;
    if (pin) headers["azureml-model-deployment"] = pin;
    const started = performance.now();
    const answer = await fetch(`/gateway/endpoints/${enc(name)}/score`, { method: "POST", headers, body });
    const text = await answer.text();
    status.className = answer.ok ? "ok" : "error";
    status.textContent = `${answer.status} in ${Math.round(performance.now() - started)} ms, answered by ${answer.headers.get("azureml-model-deployment") || "the gateway"}`;
    panel.querySelector("#test-answer").textContent = text;
  });
}

async function logsTab(panel, ep) {
  const name = ep.name;
  const { value: deployments } = await api("GET", `/onlineEndpoints/${enc(name)}/deployments`);
  panel.innerHTML = `<h2>Logs</h2><div class="row">
    <label for="logs-deployment">Deployment</label><select id="logs-deployment">${deployments.map((d) => `<option>${esc(d.name)}</option>`).join("")}</select>
    <label for="logs-container">Container</label><select id="logs-container"><option value="InferenceServer">inference server</option><option value="StorageInitializer">storage initializer</option></select>
    <label for="logs-lines">Lines</label><input id="logs-lines" type="number" min="1" max="5000" value="100">
    <button id="logs-get" type="button">Get logs</button></div>
    <div id="logs-status" role="status"></div><pre id="logs-text" aria-label="logs"></pre>`;
  const load = async () => {
    const out = panel.querySelector("#logs-text");
    try {
      const logs = await api("POST", `/onlineEndpoints/${enc(name)}/deployments/${enc(panel.querySelector("#logs-deployment").value)}/getLogs`,
        { tail: Number(panel.querySelector("#logs-lines").value), containerType: panel.querySelector("#logs-container").value });
      panel.querySelector("#logs-status").innerHTML = `<span class="muted">instance ${esc(logs.instanceId)}</span>`;
      out.textContent = logs.content || "(empty)";
    } catch (err) { panel.querySelector("#logs-status").innerHTML = problem(err, "Logs"); }
  };
  panel.querySelector("#logs-get").addEventListener("click", load);
  if (deployments.length) await load();
}

// ---- charts: small SVG line charts -------------------------------------------------------

const COLORS = ["#0b5cad", "#c0392b", "#1a7f37", "#8250df", "#bf8700", "#1b7c83"];

function chart(title, series, unit) {
  const all = series.flatMap((s) => s.points);
  if (!all.length) return `<figure><figcaption>${esc(title)}</figcaption><p class="muted">No data in this window.</p></figure>`;
  const W = 400, H = 160, L = 40, B = 18;
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs) || 1, y1 = Math.max(...ys, 1e-9) * 1.1;
  const X = (x) => L + ((x - x0) / Math.max(x1 - x0, 1)) * (W - L - 5);
  const Y = (y) => H - B - (y / y1) * (H - B - 5);
  const lines = series.map((s, i) => `<polyline fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="2" points="${s.points.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ")}"/>` +
    s.points.map((p) => `<circle r="2.5" fill="${COLORS[i % COLORS.length]}" cx="${X(p[0]).toFixed(1)}" cy="${Y(p[1]).toFixed(1)}"/>`).join("")).join("");
  const t = (ms) => new Date(ms).toTimeString().slice(0, 5);
  return `<figure data-chart="${esc(title)}"><figcaption>${esc(title)}</figcaption>
    <svg class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}: ${all.length} points, up to ${Math.max(...ys).toFixed(1)} ${esc(unit)}">
      <line x1="${L}" y1="${H - B}" x2="${W}" y2="${H - B}" stroke="#999"/><line x1="${L}" y1="0" x2="${L}" y2="${H - B}" stroke="#999"/>
      <text x="2" y="12" font-size="10">${(y1 / 1.1).toFixed(1)}</text><text x="2" y="${H - B}" font-size="10">0</text>
      <text x="${L}" y="${H - 3}" font-size="10">${t(x0)}</text><text x="${W - 30}" y="${H - 3}" font-size="10">${t(x1)}</text>${lines}</svg>
    <div class="legend">${series.map((s, i) => `<span style="--c:${COLORS[i % COLORS.length]}">${esc(s.name)}</span>`).join("")}</div></figure>`;
}

async function metricsTab(panel, ep) {
  const name = ep.name;
  panel.innerHTML = `<h2>Metrics (last hour)</h2><div id="charts" class="charts"><p class="muted">Loading…</p></div><h2>Costs (last 24 hours)</h2><div id="costs"></div>`;
  const draw = async () => {
    const charts = panel.querySelector("#charts");
    try {
      const m = await api("GET", `/onlineEndpoints/${enc(name)}/metrics?window.start=${enc(isoAgo(3600))}`);
      // Points by deployment; the endpoint's totals (no deployment) under "", which no
      // deployment can be named, so a deployment named "endpoint" stays its own series.
      const byDep = new Map();
      for (const p of m.points || []) {
        const key = p.deploymentName || "";
        if (!byDep.has(key)) byDep.set(key, []);
        byDep.get(key).push(p);
      }
      const deps = [...byDep.keys()].filter((d) => d !== "");
      const label = (d) => (d === "" ? "endpoint total" : d);
      const series = (names, f) => names.map((d) => ({ name: label(d), points: byDep.get(d).map((p) => [Date.parse(p.time), f(p)]) }));
      const errors = (p) => Object.entries(p.responsesByStatusClass || {}).filter(([k]) => k === "4xx" || k === "5xx").reduce((s, [, v]) => s + Number(v), 0);
      const total = byDep.has("") ? [""] : [];
      charts.innerHTML = [
        chart("Requests per minute", series([...total, ...deps], (p) => p.requestsPerMinute), "requests/min"),
        chart("Latency P50 / P99 (ms)", [...series(total, (p) => p.latencyP50Ms).map((s) => ({ ...s, name: "P50" })), ...series(total, (p) => p.latencyP99Ms).map((s) => ({ ...s, name: "P99" }))], "ms"),
        chart("Errors (4xx + 5xx)", series([...total, ...deps], errors), "responses"),
        chart("CPU %", series(deps, (p) => p.cpuUtilizationPercent), "%"),
        chart("Memory %", series(deps, (p) => p.memoryUtilizationPercent), "%"),
        chart("Instances", series(deps, (p) => p.instanceCount), "instances"),
      ].join("");
    } catch (err) { charts.innerHTML = problem(err, "Metrics"); }
    const costs = panel.querySelector("#costs");
    try {
      const c = await api("GET", `/costs?endpointName=${enc(name)}&window.start=${enc(isoAgo(86400))}`);
      costs.innerHTML = `<div class="table-wrap"><table><thead><tr><th scope="col">Deployment</th><th scope="col">Instance type</th><th scope="col">Instance hours</th><th scope="col">Price / hour</th><th scope="col">Cost (${esc(c.currency)})</th></tr></thead><tbody>
        ${(c.lines || []).map((l) => `<tr><td>${esc(l.deploymentName)}</td><td>${esc(l.instanceType)}</td><td>${Number(l.instanceHours).toFixed(3)}</td><td>${Number(l.hourlyPrice).toFixed(3)}</td><td>${Number(l.cost).toFixed(4)}</td></tr>`).join("")}
        </tbody><tfoot><tr><th scope="row" colspan="4">Total</th><td>${Number(c.total || 0).toFixed(4)}</td></tr></tfoot></table></div>`;
    } catch (err) { costs.innerHTML = problem(err, "Costs"); }
  };
  await draw();
  every(15000, draw);
}

// ---- batch, jobs, assets -----------------------------------------------------------------

// A batch deployment's name, with its state unless Succeeded (Creating while its environment
// builds; Failed when it did not build: its jobs are refused).
function deploymentName(d) {
  const state = d.properties.provisioningState;
  const why = d.properties.statusMessage ? ` title="${esc(d.properties.statusMessage)}"` : "";
  return state === "Succeeded" ? esc(d.name) : `${esc(d.name)} <span class="state-${esc(state)}"${why}>(${esc(state)})</span>`;
}

async function batchPage() {
  view.innerHTML = `<h1>Batch endpoints</h1><div id="batch"><p class="muted">Loading…</p></div>`;
  const box = document.getElementById("batch");
  try {
    const { value: endpoints } = await api("GET", "/batchEndpoints?count=1000");
    const rows = await Promise.all(endpoints.map(async (e) => {
      const { value: deployments } = await api("GET", `/batchEndpoints/${enc(e.name)}/deployments`);
      return `<tr><td>${esc(e.name)}</td><td>${esc(e.properties.defaults.deploymentName)}</td><td>${deployments.map(deploymentName).join(", ")}</td>
        <td><a href="#/jobs">jobs</a></td></tr>`;
    }));
    box.innerHTML = `<div class="table-wrap"><table><thead><tr><th scope="col">Name</th><th scope="col">Default deployment</th><th scope="col">Deployments</th><th scope="col"></th></tr></thead>
      <tbody>${rows.join("") || `<tr><td colspan="4" class="muted">No batch endpoints yet.</td></tr>`}</tbody></table></div>`;
  } catch (err) { box.innerHTML = problem(err, "Batch endpoints"); }
}

// A job as REST answers it: Azure's resource, Sluice's view of the batch job in properties.details.
const progress = (j) => {
  const p = j.progress || {};
  return `<progress max="${p.miniBatchesTotal || 1}" value="${(p.miniBatchesDone || 0) + (p.miniBatchesFailed || 0)}"></progress>
    ${p.miniBatchesDone || 0}/${p.miniBatchesTotal || 0} mini-batches${p.miniBatchesFailed ? `, ${p.miniBatchesFailed} failed` : ""}`;
};

async function jobsPage() {
  view.innerHTML = `<h1>Jobs</h1><div id="jobs"><p class="muted">Loading…</p></div>`;
  const draw = async () => {
    const box = document.getElementById("jobs");
    try {
      const { value: jobs } = await api("GET", "/jobs?page.pageSize=200");
      box.innerHTML = `<div class="table-wrap"><table><thead><tr><th scope="col">Job</th><th scope="col">Endpoint / deployment</th><th scope="col">State</th><th scope="col">Progress</th><th scope="col">Created</th></tr></thead><tbody>
        ${jobs.map((r) => `<tr><td><a href="#/jobs/${enc(r.name)}">${esc(r.name)}</a></td><td>${esc(r.properties.details.endpointName)} / ${esc(r.properties.details.deploymentName)}</td>
          <td class="state-${esc(r.properties.status)}">${esc(r.properties.status)}</td><td>${progress(r.properties.details)}</td><td>${esc(r.systemData.createdAt)}</td></tr>`).join("") || `<tr><td colspan="5" class="muted">No jobs yet.</td></tr>`}
        </tbody></table></div>`;
    } catch (err) { box.innerHTML = problem(err, "Jobs"); }
  };
  await draw();
  every(3000, draw);
}

async function jobPage(name) {
  view.innerHTML = `<p><a href="#/jobs">← Jobs</a></p><h1>${esc(name)}</h1><div id="job"></div><h2>Log</h2><pre id="job-log" aria-label="job log"></pre>`;
  // A failed read (the runner restarting, a log being rotated) shows on the page and the
  // next poll tries again: a job page left open follows its job to the end.
  const draw = async () => {
    let r;
    try { r = await api("GET", `/jobs/${enc(name)}`); } catch (err) {
      document.getElementById("job").innerHTML = problem(err, "Job");
      return false;
    }
    const j = r.properties.details;
    document.getElementById("job").innerHTML = `<p class="state-${esc(r.properties.status)}">${esc(r.properties.status)} ${esc(j.statusMessage)}</p><p>${progress(j)}</p>
      <p>${esc(j.endpointName)} / ${esc(j.deploymentName)} · input <code>${esc(j.input)}</code> · output <code>${esc(j.outputPath)}/${esc(j.outputFileName)}</code>
      ${j.cost ? ` · cost ${Number(j.cost.cost || 0).toFixed(4)} USD` : ""}</p>
      ${(j.errors || []).map((e) => `<p class="error">mini-batch ${e.miniBatch} (${esc((e.files || []).join(", "))}): ${esc(e.exception)}</p>`).join("")}`;
    const ended = ["Completed", "Failed", "Canceled"].includes(r.properties.status);
    try {
      const lines = await api("GET", `/jobs/${enc(name)}/logs`);
      document.getElementById("job-log").textContent = (Array.isArray(lines) ? lines : [lines]).map((l) => `${l.time || ""} ${l.source || ""} ${l.line || ""}`).join("\n");
    } catch (err) {
      document.getElementById("job-log").textContent = `The log could not be read: ${err.message}`;
      return false;
    }
    return ended;
  };
  if (!(await draw())) every(3000, draw);
}

// Azure's asset resources: a container per name (/models), its versions (/models/{name}/versions).
const ASSET_KINDS = [
  ["models", "Models", (p) => p.modelType],
  ["environments", "Environments", (p) => p.image || (p.condaFile ? "conda" : "pip")],
  ["data", "Data", (p) => p.dataType],
];

async function assetsPage() {
  view.innerHTML = `<h1>Models, environments and data</h1><div id="assets"></div>`;
  const box = document.getElementById("assets");
  const parts = [];
  for (const [plural, title, type] of ASSET_KINDS) {
    try {
      const { value: containers } = await api("GET", `/${plural}?listViewType=All`);
      const lists = await Promise.all(containers.map((c) => api("GET", `/${plural}/${enc(c.name)}/versions?listViewType=All`)));
      const rows = lists.flatMap((list, i) => list.value.map((v) => `<tr><td>${esc(containers[i].name)}</td><td>${esc(v.name)}</td><td>${esc(type(v.properties))}</td><td>${esc((v.properties.usedBy || []).join(", "))}</td><td>${v.properties.isArchived ? "yes" : ""}</td></tr>`));
      parts.push(`<h2>${title}</h2><div class="table-wrap"><table><thead><tr><th scope="col">Name</th><th scope="col">Version</th><th scope="col">Type</th><th scope="col">Used by</th><th scope="col">Archived</th></tr></thead><tbody>
        ${rows.join("") || `<tr><td colspan="5" class="muted">None registered.</td></tr>`}
        </tbody></table></div>`);
    } catch (err) { parts.push(problem(err, title)); }
  }
  box.innerHTML = parts.join("");
}

route();
