// Station pages: idle countdown, activity, confirm dialogs, keyboard-wedge scanners, scan polling and the
// capture screen's live review strip. No inline script anywhere (the page's CSP allows 'self' only).
(() => {
  "use strict";
  const body = document.body;
  const screen = body.dataset.screen;
  const hasSession = body.dataset.session === "1";

  const postJson = (url, data) => fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(data || {}),
    credentials: "same-origin",
  });

  function show(el, text, isError) {
    if (!el) return;
    el.textContent = text;
    el.classList.toggle("error-text", !!isError);
  }

  // --- dialogs: Cancel (in the top bar) and [data-confirm] buttons ------------------------------------
  let confirmed = null;
  function confirmDialog(message, onYes) {
    let dialog = document.getElementById("confirm-dialog");
    if (!dialog) {
      dialog = document.createElement("dialog");
      dialog.id = "confirm-dialog";
      dialog.setAttribute("data-testid", "confirm-dialog");
      dialog.innerHTML = '<div class="stack center"><h2></h2><div class="row">' +
        '<button type="button" class="btn big" data-no></button>' +
        '<button type="button" class="btn big stop solid" data-yes data-testid="confirm-yes"></button></div></div>';
      dialog.querySelector("[data-no]").textContent = body.dataset.noLabel || "No";
      dialog.querySelector("[data-yes]").textContent = body.dataset.yesLabel || "Yes";
      body.appendChild(dialog);
      dialog.querySelector("[data-no]").addEventListener("click", () => dialog.close());
    }
    dialog.querySelector("h2").textContent = message;
    dialog.querySelector("[data-yes]").onclick = () => { dialog.close(); onYes(); };
    dialog.showModal();
  }

  document.addEventListener("click", (e) => {
    const opener = e.target.closest("[data-open-dialog]");
    if (opener) document.getElementById(opener.dataset.openDialog).showModal();
    const closer = e.target.closest("[data-close-dialog]");
    if (closer) closer.closest("dialog").close();
    const needsConfirm = e.target.closest("button[data-confirm]");
    if (needsConfirm && confirmed !== needsConfirm) {
      e.preventDefault();
      confirmDialog(needsConfirm.dataset.confirm, () => {
        confirmed = needsConfirm;
        needsConfirm.form.requestSubmit(needsConfirm);
      });
    }
    const filler = e.target.closest("[data-fill]");
    if (filler) {
      const field = document.getElementById(filler.dataset.fill);
      field.value = filler.dataset.value;  // no focus: the keyboard stays away, Next stays in view
    }
  });

  // a second tap while a form is on its way does nothing (no double Send)
  document.addEventListener("submit", (e) => {
    const form = e.target;
    if (form.dataset.busy) { e.preventDefault(); return; }
    form.dataset.busy = "1";
    const b = e.submitter;
    if (b && b.dataset.busyText) { b.textContent = b.dataset.busyText; b.setAttribute("aria-busy", "true"); }
    setTimeout(() => { delete form.dataset.busy; }, 5000);
  });

  // --- activity and the idle countdown ----------------------------------------------------------------
  if (hasSession) {
    let lastPing = 0;
    const ping = (force) => {
      const now = Date.now();
      if (force || now - lastPing > 2000) { lastPing = now; postJson("/api/activity"); }
    };
    ["pointerdown", "keydown"].forEach((t) => document.addEventListener(t, () => ping(false), { capture: true, passive: true }));
    const overlay = document.getElementById("idle-warning");
    const count = document.getElementById("idle-count");
    document.getElementById("idle-continue").addEventListener("click", () => {
      ping(true);
      overlay.classList.add("hidden");
    });
    // While this page's own navigation is on its way (a form post that ends the session, say), the
    // server may already have cleared the cookie: a poll in between sees "no session, no reason" and
    // must not replace the answer that carries the real reason. A stalled navigation is ignored for 10 s.
    let leavingSince = 0;
    window.addEventListener("beforeunload", () => { leavingSince = Date.now(); });
    window.addEventListener("pageshow", () => { leavingSince = 0; });
    const poll = async () => {
      try {
        const r = await fetch("/api/status", { credentials: "same-origin" });
        const j = await r.json();
        if (!j.session && Date.now() - leavingSince < 10000) {
          setTimeout(poll, 1000);
          return;
        }
        if (!j.session) {
          if (j.ended === "sent") {
            // Send finished while this page waited for its answer: show the confirmation, not sign-in.
            location.replace("/done");
            return;
          }
          const notice = { "idle-timeout": "idle", cancelled: "cancel", "consent-withdrawn": "withdrawn" }[j.ended] || j.ended || "1";
          location.replace("/?ended=" + encodeURIComponent(notice));
          return;
        }
        if (j.warn) {
          count.textContent = Math.max(0, Math.ceil(j.remaining));
          overlay.classList.remove("hidden");
        } else {
          overlay.classList.add("hidden");
        }
      } catch (err) { /* the server restarts: keep trying */ }
      setTimeout(poll, 1000);
    };
    setTimeout(poll, 1000);
  }

  // --- results of a scan (camera poll or wedge) ------------------------------------------------------
  const scanMessage = document.getElementById("scan-message");
  function handleScan(j) {
    if (!j) return false;
    if (j.redirect) {
      if (j.status) show(scanMessage, j.status, false);  // e.g. the next page looks the patient up first
      location.assign(j.redirect);
      return true;
    }
    if (j.message) show(scanMessage, j.message, true);
    else if (j.error) show(scanMessage, j.error, true);
    return false;
  }

  // --- keyboard-wedge scanners: a fast burst of keys ending in Enter (kiosk/scan/wedge.py rules) --------
  if (screen === "signin" || screen === "patient") {
    const maxGap = (parseFloat(body.dataset.wedgeGap) || 30) / 1000;
    const keys = [];
    document.addEventListener("keydown", (e) => {
      // When the key arrived, not when this handler ran: a busy page (loading, decoding the preview) runs
      // handlers late and unevenly, which would split a scanner's burst at a false gap.
      const t = (e.timeStamp || performance.now()) / 1000;
      if (e.key === "Enter") {
        // the trailing run of keys that came within maxGap of each other
        let i = keys.length - 1;
        while (i > 0 && keys[i][1] - keys[i - 1][1] <= maxGap) i -= 1;
        const run = keys.slice(Math.max(i, 0));
        keys.length = 0;
        if (run.length >= 4 && t - run[run.length - 1][1] <= maxGap) {
          e.preventDefault();
          const field = document.activeElement;
          if (field && field.tagName === "INPUT" && field.value.endsWith(run.map((k) => k[0]).join(""))) {
            field.value = field.value.slice(0, field.value.length - run.length);
          }
          postJson("/api/wedge", { screen, keys: [...run, ["Enter", t]] })
            .then((r) => r.json()).then(handleScan).catch(() => {});
        }
        return;
      }
      if (e.key.length === 1 || e.key === "GroupSeparator") {
        keys.push([e.key, t]);
        if (keys.length > 512) keys.shift();
      }
    }, true);
  }

  // --- camera scanning: poll the server's decoder about five times a second -------------------------
  const scanUrl = body.dataset.scanUrl;
  if (scanUrl) {
    let seq = parseInt(body.dataset.scanSeq || "0", 10);
    const loop = async () => {
      try {
        const r = await fetch(scanUrl + "?after=" + seq, { credentials: "same-origin" });
        const j = await r.json();
        if (j.seq) seq = j.seq;
        if (handleScan(j)) return;
      } catch (err) { /* keep polling */ }
      setTimeout(loop, 200);
    };
    setTimeout(loop, 200);
  }

  // --- the capture screen: shutter button and the live review strip (long poll) --------------------------
  if (screen === "capture") {
    let strip = document.getElementById("strip");
    const next = document.getElementById("to-review");
    const viewer = document.getElementById("viewer");
    const captureError = document.getElementById("capture-error");
    const shoot = document.getElementById("shoot");
    // the second GPIO button ("done taking photos") raises the strip's data-next; this page goes on to
    // review when it rises above what the page was rendered with (kiosk/app/runtime.py second_button)
    const nextAtLoad = parseInt(strip.dataset.next || "0", 10);
    shoot.addEventListener("click", () => {
      postJson("/capture/shoot");
      viewer.classList.remove("flash");
      void viewer.offsetWidth;
      viewer.classList.add("flash");
    });
    const update = (fresh) => {
      if (parseInt(fresh.dataset.next || "0", 10) > nextAtLoad && fresh.dataset.count !== "0") {
        location.assign(next.href);
        return;
      }
      strip.replaceWith(fresh);
      strip = fresh;
      next.classList.toggle("hidden", fresh.dataset.count === "0");
      captureError.classList.toggle("hidden", fresh.dataset.error !== "camera");
      strip.scrollLeft = strip.scrollWidth;
    };
    const loop = async () => {
      try {
        const r = await fetch("/capture/strip?v=" + strip.dataset.version, { credentials: "same-origin" });
        if (r.ok && !r.redirected) {
          const html = (await r.text()).trim();
          if (html) {
            const holder = document.createElement("div");
            holder.innerHTML = html;
            if (holder.firstElementChild) update(holder.firstElementChild);
          }
        }
      } catch (err) { await new Promise((res) => setTimeout(res, 1000)); }
      setTimeout(loop, 10);
    };
    loop();
  }

  // --- admin barcode test -----------------------------------------------------------------------------
  const adminScan = document.querySelector("[data-admin-scan]");
  if (adminScan) {
    const out = document.getElementById("scan-result");
    let seq = parseInt(adminScan.dataset.scanSeq || "0", 10);
    const loop = async () => {
      try {
        const r = await fetch(adminScan.dataset.adminScan + "?after=" + seq, { credentials: "same-origin" });
        const j = await r.json();
        if (j.format) {
          seq = j.seq;
          out.textContent = j.format + " (" + j.ms + " ms)\n" + (j.kind ? j.kind + " · " + j.source + "\n" : "not recognised\n") +
            Object.entries(j.fields).map(([k, v]) => k + ": " + v).join("\n") + "\n\n" + j.text;
        } else if (j.error) {
          out.textContent = j.error;
        }
      } catch (err) { /* keep polling */ }
      setTimeout(loop, 300);
    };
    loop();
  }

  // --- confirmation screen: back to the start by itself --------------------------------------------------
  if (body.dataset.returnAfter) {
    setTimeout(() => location.replace("/"), parseFloat(body.dataset.returnAfter) * 1000);
  }

  // a live preview that drops (camera unplugged) is retried every few seconds
  document.querySelectorAll("img[data-live]").forEach((img) => {
    img.addEventListener("error", () => {
      setTimeout(() => {
        const url = new URL(img.src, location.href);
        url.searchParams.set("retry", Date.now());
        img.src = url.toString();
      }, 3000);
    });
  });
})();
