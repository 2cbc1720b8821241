// Keyboard-only review: 1 / 2 / 3 judge (saved at once), e edits, Ctrl+Enter saves the edit, Enter goes on.
"use strict";
(() => {
  const pair = document.getElementById("pair");
  if (!pair) return;
  const key = pair.dataset.key;
  const editor = document.getElementById("editor");
  const after = document.getElementById("after");
  const status = document.getElementById("status");
  const error = document.getElementById("error");
  let position = null;  // the saved choice: 1, 2 or 3
  let busy = false;

  async function post(url, body) {
    const reply = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                    body: JSON.stringify({key, ...body})});
    if (!reply.ok) throw new Error(`${reply.status} ${reply.statusText}`);
    return reply.json();
  }

  function showError(e) {
    error.textContent = `Not saved (${e.message}): is the review server still running?`;
    error.hidden = false;
  }

  async function judge(choice) {
    busy = true;
    try {
      await post("/api/judge", {position: choice});
    } catch (e) { showError(e); return; } finally { busy = false; }
    error.hidden = true;
    position = choice;
    document.querySelectorAll(".answer").forEach((el, i) => el.classList.toggle("chosen", i + 1 === choice));
    document.querySelector(".answers").classList.toggle("both-bad", choice === 3);
    const chosen = document.querySelector(`#answer-${choice} .text`);
    editor.value = chosen ? chosen.textContent : "";
    status.textContent = choice === 3 ? "Saved: both bad." : `Saved: answer ${choice} is better.`;
    after.hidden = false;
    pair.dataset.saved = String(choice);
  }

  async function saveCorrection() {
    busy = true;
    try {
      await post("/api/correct", {text: editor.value});
    } catch (e) { showError(e); return; } finally { busy = false; }
    next();
  }

  function next() { window.location.replace("/"); }

  document.addEventListener("keydown", (ev) => {
    if (busy) { ev.preventDefault(); return; }
    if (document.activeElement === editor) {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); saveCorrection(); }
      else if (ev.key === "Escape") { ev.preventDefault(); editor.blur(); }
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (["1", "2", "3"].includes(ev.key)) { ev.preventDefault(); judge(Number(ev.key)); }
    else if (position !== null && ev.key === "e") { ev.preventDefault(); editor.focus(); }
    else if (position !== null && ev.key === "Enter") { ev.preventDefault(); next(); }
  });
})();
