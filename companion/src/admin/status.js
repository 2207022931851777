// vigil's live status page (admin/status.html), served as /status.js.
//
// It polls status.json (every second, less often when a response is slow) and rebuilds the
// clusters with createElement and textContent only, never an HTML parser: every name it shows
// (cluster, hostname, reason) is inserted as text, so markup in a name is displayed, never run.
// The page is served with `Content-Security-Policy: default-src 'self'`.
"use strict";

(function () {
  const POLL_MS = 1000;
  const TIMELINE_MIN_MS = 30 * 1000;
  const SHOWN_TRANSITIONS = 3;
  const main = document.getElementById("clusters");
  const updated = document.getElementById("updated");

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    return node;
  }

  function healthClass(health, excluded) {
    if (excluded && health !== "healthy") {
      return "excluded";
    }
    if (health === "healthy" || health === "degraded" || health === "unhealthy") {
      return health;
    }
    return "unknown";
  }

  function ago(ms) {
    if (!isFinite(ms)) {
      return "";
    }
    if (ms < 1000) {
      return "just now";
    }
    if (ms < 60 * 1000) {
      return (ms / 1000).toFixed(1) + " s ago";
    }
    if (ms < 3600 * 1000) {
      return Math.round(ms / 60000) + " min ago";
    }
    return Math.round(ms / 3600000) + " h ago";
  }

  function clock(at) {
    const date = new Date(at);
    return isNaN(date) ? String(at) : date.toLocaleTimeString();
  }

  function percent(value) {
    return value === null || value === undefined ? "–" : value.toFixed(1) + " %";
  }

  function tag(text, className) {
    return el("span", "tag" + (className ? " " + className : ""), text);
  }

  function stat(label, value) {
    const span = el("span");
    span.appendChild(el("b", null, value));
    span.appendChild(document.createTextNode(" " + label));
    return span;
  }

  function lastCheckCell(last, now) {
    const td = el("td");
    if (!last) {
      td.appendChild(el("span", "empty", "not checked yet"));
      return td;
    }
    td.appendChild(el("span", "result " + (last.passed ? "pass" : "fail"), last.reason));
    const latency = last.latency_ms < 10 ? last.latency_ms.toFixed(2) : last.latency_ms.toFixed(0);
    const when = el("div", "muted", latency + " ms · " + ago(now - Date.parse(last.at)));
    when.title = "checked at " + clock(last.at);
    td.appendChild(when);
    return td;
  }

  function outlierCell(outlier) {
    const td = el("td");
    if (!outlier) {
      td.appendChild(el("span", "muted", "–"));
      return td;
    }
    if (outlier.ejected) {
      td.appendChild(el("span", "flags unhealthy", "ejected"));
    } else {
      td.appendChild(el("span", "muted", "not ejected"));
    }
    td.appendChild(el("div", "muted", "success rate " + percent(outlier.success_rate)));
    td.appendChild(el("div", "muted",
      "ejections " + outlier.num_ejections + " · 5xx in a row " + outlier.consecutive_5xx));
    return td;
  }

  // The host's recent transitions as a strip (each span coloured by the health it led to, a
  // mark at each change, its reason in the mark's tooltip) and the last few in words.
  function transitionsCell(transitions, now) {
    const td = el("td");
    if (transitions.length === 0) {
      td.appendChild(el("span", "empty", "no transitions"));
      return td;
    }
    const times = transitions.map((t) => Date.parse(t.at));
    const end = now;
    const start = Math.min(times[0] - 0.05 * (end - times[0]), end - TIMELINE_MIN_MS);
    const span = Math.max(end - start, 1);
    const position = (at) => Math.min(100, Math.max(0, (100 * (at - start)) / span));
    const strip = el("div", "timeline");
    strip.title = "since " + clock(start);
    // Before the first transition kept, the host's state is not known here: left grey.
    const first = el("div", "segment unknown");
    first.style.left = "0%";
    first.style.width = position(times[0]) + "%";
    first.title = "before " + clock(transitions[0].at) + ": " + transitions[0].from;
    strip.appendChild(first);
    transitions.forEach((transition, i) => {
      const from = position(times[i]);
      const to = i + 1 < times.length ? position(times[i + 1]) : 100;
      const segment = el("div", "segment " + healthClass(transition.to_health, false));
      segment.style.left = from + "%";
      segment.style.width = Math.max(to - from, 0) + "%";
      segment.title = clock(transition.at) + " → " + transition.to + ": " + transition.reason;
      strip.appendChild(segment);
      const mark = el("div", "mark");
      mark.style.left = from + "%";
      mark.title = segment.title;
      strip.appendChild(mark);
    });
    td.appendChild(strip);
    const list = el("ol", "transitions");
    transitions.slice(-SHOWN_TRANSITIONS).reverse().forEach((transition) => {
      const item = el("li");
      item.appendChild(document.createTextNode(
        clock(transition.at) + "  " + transition.from + " → " + transition.to + "  "));
      item.appendChild(el("span", "reason", transition.reason));
      list.appendChild(item);
    });
    td.appendChild(list);
    return td;
  }

  function hostRow(cluster, host, now) {
    const row = el("tr", "host");
    row.dataset.cluster = cluster.name;
    row.dataset.address = host.address;
    row.dataset.flags = host.health_flags;
    row.dataset.health = host.health;
    const who = el("td");
    who.appendChild(el("div", "address", host.address));
    if (host.hostname) {
      who.appendChild(el("div", "hostname", host.hostname));
    }
    row.appendChild(who);
    const health = el("td");
    health.appendChild(el("span", "flags " + healthClass(host.health, host.excluded),
      host.health_flags));
    row.appendChild(health);
    row.appendChild(lastCheckCell(host.last_check, now));
    row.appendChild(outlierCell(host.outlier));
    row.appendChild(el("td", "num", host.weight));
    row.appendChild(el("td", "num", host.priority));
    row.appendChild(transitionsCell(host.transitions || [], now));
    return row;
  }

  function clusterSection(cluster, now) {
    const section = el("section", "cluster");
    section.dataset.cluster = cluster.name;
    const head = el("div", "cluster-head");
    head.appendChild(el("h2", null, cluster.name));
    if (cluster.panic === true) {
      head.appendChild(tag("panic mode", "panic"));
    } else if (cluster.panic === false) {
      head.appendChild(tag("no panic", "ok"));
    }
    if (!cluster.initialized) {
      head.appendChild(tag("initializing"));
    }
    if (!cluster.health_checked) {
      head.appendChild(tag("no active checks"));
    }
    if (cluster.added_via_api) {
      head.appendChild(tag("added via API"));
    }
    section.appendChild(head);

    const m = cluster.membership;
    const summary = el("div", "summary");
    summary.appendChild(stat("hosts", m.total));
    summary.appendChild(stat("healthy", m.healthy));
    summary.appendChild(stat("degraded", m.degraded));
    summary.appendChild(stat("excluded", m.excluded));
    if (cluster.health_check) {
      const hc = cluster.health_check;
      summary.appendChild(stat("checks", hc.attempt));
      summary.appendChild(stat("failed", hc.failure));
    }
    if (cluster.outlier) {
      const o = cluster.outlier;
      summary.appendChild(stat("ejected by outlier detection", o.ejections_active));
      summary.appendChild(stat("success rate average", percent(o.success_rate_average)));
      summary.appendChild(stat("ejection threshold", percent(o.success_rate_ejection_threshold)));
    }
    section.appendChild(summary);

    if (cluster.hosts.length === 0) {
      section.appendChild(el("div", "empty", "no hosts"));
      return section;
    }
    const table = el("table", "hosts");
    const headRow = el("tr");
    ["Host", "Health", "Last check", "Outlier", "Weight", "Priority", "Recent transitions"]
      .forEach((name) => headRow.appendChild(el("th", null, name)));
    const thead = el("thead");
    thead.appendChild(headRow);
    table.appendChild(thead);
    const tbody = el("tbody");
    cluster.hosts.forEach((host) => tbody.appendChild(hostRow(cluster, host, now)));
    table.appendChild(tbody);
    section.appendChild(table);
    return section;
  }

  function render(status) {
    const now = Date.parse(status.now);
    const sections = status.clusters.map((cluster) => clusterSection(cluster, now));
    if (sections.length === 0) {
      sections.push(el("div", "empty", "no clusters"));
    }
    main.replaceChildren(...sections);
    updated.textContent = "live · updated " + clock(status.now);
    updated.className = "state";
  }

  async function poll() {
    const started = performance.now();
    try {
      const response = await fetch("status.json", { cache: "no-store" });
      if (!response.ok) {
        throw new Error("status.json answered " + response.status);
      }
      render(await response.json());
    } catch (err) {
      updated.textContent = "cannot read status.json (" + err.message + "); retrying";
      updated.className = "state error";
    }
    const took = performance.now() - started;
    window.setTimeout(poll, Math.max(POLL_MS, 4 * took));
  }

  poll();
})();
