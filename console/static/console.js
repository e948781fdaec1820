// Dispatcher console: live overview numbers and small conveniences. No innerHTML anywhere:
// values are set with textContent and setAttribute, so no server value becomes markup.
"use strict";

(function () {
  // --- live overview: poll live.json and update cells marked data-field ------------------
  const live = document.querySelector("[data-live]");
  if (live) {
    const url = live.getAttribute("data-live");
    const every = Math.max(1000, 1000 * Number(live.getAttribute("data-interval") || 2));
    const sparks = ["spark_delivered", "spark_failed", "spark_backlog"];
    const stamp = document.querySelector("[data-updated]");
    let failures = 0;

    const apply = (data) => {
      for (const row of data.pools) {
        const el = live.querySelector(`tr[data-pool="${CSS.escape(row.name)}"]`);
        if (!el) continue;
        el.querySelectorAll("[data-field]").forEach((cell) => {
          const key = cell.getAttribute("data-field");
          if (!(key in row)) return;
          if (sparks.includes(key)) cell.setAttribute("d", row[key]);
          else if (key === "state") {
            cell.textContent = row.state;
            cell.className = `badge ${row.state}`;
          } else if (key === "protection") {
            cell.textContent = row.protection;
            cell.className = row.circuit !== "closed" || row.held ? "hot" : "";
          } else if (cell.tagName === "METER") cell.setAttribute("value", row[key]);
          else cell.textContent = row[key];
        });
        el.querySelectorAll("meter[data-max]").forEach((m) => m.setAttribute("max", row.limit));
        el.querySelectorAll("[data-when-state]").forEach((f) => {
          f.hidden = f.getAttribute("data-when-state") !== (row.state === "paused" ? "paused" : "active");
        });
      }
      for (const key of ["dlq_total", "backlog_total", "in_flight_total", "paused_count"]) {
        const el = document.querySelector(`[data-total="${key}"]`);
        if (el && key in data) el.textContent = data[key];
      }
      if (stamp) stamp.textContent = `updated ${new Date().toLocaleTimeString()}`;
    };

    const poll = async () => {
      try {
        const res = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (res.status === 401) { window.location.assign("login"); return; }
        if (!res.ok) throw new Error(String(res.status));
        apply(await res.json());
        failures = 0;
      } catch (e) {
        failures += 1;
        if (stamp) stamp.textContent = "live updates interrupted, retrying…";
      }
      setTimeout(poll, every * Math.min(8, 1 + failures));
    };
    setTimeout(poll, every);
  }

  // --- DLQ: counts that take a scan (tag or error text) arrive after the page --------------
  document.querySelectorAll("[data-count-url]").forEach(async (el) => {
    try {
      const res = await fetch(el.getAttribute("data-count-url"), { credentials: "same-origin" });
      if (!res.ok) throw new Error(String(res.status));
      el.textContent = (await res.json()).text;
    } catch (e) {
      el.textContent = "some";
    }
  });

  // --- DLQ: "select all" checkbox -----------------------------------------------------------
  const all = document.querySelector("[data-select-all]");
  if (all) {
    all.addEventListener("change", () => {
      document.querySelectorAll("input[name=sel]").forEach((box) => { box.checked = all.checked; });
    });
  }

  // --- edit payload: check the JSON before sending ----------------------------------------
  const editor = document.querySelector("textarea[data-json]");
  if (editor) {
    const note = document.querySelector("[data-json-note]");
    const check = () => {
      try {
        JSON.parse(editor.value);
        editor.setCustomValidity("");
        if (note) note.textContent = "Valid JSON.";
      } catch (e) {
        editor.setCustomValidity("Not valid JSON");
        if (note) note.textContent = `Not valid JSON: ${e.message}`;
      }
    };
    editor.addEventListener("input", check);
  }
})();
