// The "Why?" button under each finished reply: which parts of the prompt made the model say it.
// Kept apart from app.js (loaded after it; reads only the DOM it draws and the URL's #conversation):
// it finds the reply's place in the stored conversation, asks POST /v1/explain (gradient x input) for
// the reply or for the part of it the user has selected, and shows the prompt as a heatmap
// (red raised the reply's probability, blue lowered it), with the score of each message.
"use strict";

(() => {
  const messages = document.getElementById("messages");
  if (!messages) return;

  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = localStorage.getItem("parley.key");
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  function addButtons() {
    for (const box of messages.querySelectorAll(".message.assistant:not(.streaming)")) {
      if (box.querySelector(":scope > .why-button")) continue;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "why-button small";
      button.textContent = "Why?";
      button.title = "Which parts of the prompt made the model say this (select part of the reply to ask about it)";
      button.addEventListener("click", () => explain(box, button));
      box.append(button);
    }
  }

  function selectedText(box) {
    const selection = window.getSelection();
    if (!selection || selection.isCollapsed || !box.contains(selection.anchorNode)) return null;
    return selection.toString().trim() || null;
  }

  async function explain(box, button) {
    const cid = decodeURIComponent(location.hash.slice(1));
    const index = [...messages.querySelectorAll(".message")].indexOf(box);
    const old = box.querySelector(":scope > .why");
    if (old) { old.remove(); return; }  // a second click closes the panel
    const panel = document.createElement("div");
    panel.className = "why";
    panel.textContent = "Working out why…";
    box.append(panel);
    button.disabled = true;
    try {
      if (!cid) throw new Error("this reply is not stored yet");
      const c = await call("GET", "/v1/conversations/" + encodeURIComponent(cid));
      const stored = c.messages.map((m) => ({ role: m.role, content: m.content }));
      if (!stored[index] || stored[index].role !== "assistant") throw new Error("reload the page: the conversation changed");
      const prompt = (c.system ? [{ role: "system", content: c.system }] : []).concat(stored.slice(0, index));
      const span = selectedText(box);
      const document_ = await call("POST", "/v1/explain", {
        messages: prompt, reply: stored[index].content, span, methods: ["gradient_x_input"],
      });
      draw(panel, document_, span);
    } catch (e) {
      panel.textContent = "Why? failed: " + e.message;
      panel.classList.add("error");
    } finally {
      button.disabled = false;
    }
  }

  async function call(method, path, body) {
    const response = await fetch(path, { method, headers: headers(), body: body && JSON.stringify(body) });
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
      throw new Error(message);
    }
    return response.json();
  }

  function draw(panel, doc, span) {
    const method = Object.keys(doc.scores)[0];
    const scores = doc.scores[method];
    const scale = Math.max(...scores.map(Math.abs)) || 1;
    const [first, end] = doc.span;
    const target = doc.reply_tokens.slice(first, end).map((t) => t.text).join("");
    const head = document.createElement("p");
    head.className = "small muted";
    head.textContent = `Why ${span ? "“" + target.trim().slice(0, 80) + "”" : "this reply"} ` +
      `(log p ${doc.target_logprob.toFixed(2)}): red parts of the prompt made it likelier, blue less likely.`;
    const heat = document.createElement("pre");
    heat.className = "why-heat";
    scores.forEach((score, i) => {
      const token = document.createElement("span");
      token.className = "why-token";
      token.textContent = doc.prompt_tokens[i];
      const share = Math.min(1, Math.abs(score) / scale);
      token.style.backgroundColor = score > 0 ? `rgba(214, 39, 40, ${share.toFixed(2)})` : `rgba(31, 119, 180, ${share.toFixed(2)})`;
      token.title = score.toFixed(4);
      heat.append(token);
    });
    const table = document.createElement("table");
    table.className = "why-messages small";
    for (const m of doc.by_message[method]) {
      const row = table.insertRow();
      row.insertCell().textContent = m.message;
      row.insertCell().textContent = (m.score > 0 ? "+" : "") + m.score.toFixed(3);
    }
    panel.replaceChildren(head, heat, table);
  }

  new MutationObserver(addButtons).observe(messages, { childList: true, subtree: true, attributes: true,
                                                       attributeFilter: ["class"] });
  addButtons();
})();
