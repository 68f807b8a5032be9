// Parley's chat page: conversations, streamed replies rendered as Markdown with highlighted code.
// Talks to the same server's /v1/conversations routes (see parley/serve/conversations_api.py).
// No build step: plain browser JavaScript plus the vendored marked, DOMPurify and highlight.js.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SETTINGS = ["temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "seed"];
  const INTEGERS = ["top_k", "max_new_tokens", "seed"];
  const state = { cid: null, busy: false, abort: null, messages: [], list: [], confidence: false, pinned: false };

  // ---- HTTP -------------------------------------------------------------------------------
  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = localStorage.getItem("parley.key");
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  async function api(method, path, body) {
    const response = await fetch(path, { method, headers: headers(), body: body && JSON.stringify(body) });
    if (!response.ok) throw await failure(response);
    return response.json();
  }

  async function failure(response) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON: keep the status */ }
    if (response.status === 401) {
      $("settings").hidden = false;
      $("api-key").focus();
    }
    return new Error(message);
  }

  // Server-sent events from a POST: fetch's body, split at blank lines.
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) !== -1) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (data) yield JSON.parse(data);
      }
    }
  }

  // ---- Rendering ----------------------------------------------------------------------------
  // Messages are untrusted (a model can be prompt-injected; the API stores what clients send), so
  // only the markup Markdown needs survives: no forms or inputs to hijack the composer, no ids or
  // names to clobber the page's elements, no style to fake a prompt, no images or frames to send
  // data out. The server's Content-Security-Policy is the second line behind this.
  const SAFE_MARKDOWN = {
    ALLOWED_TAGS: ["a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li",
      "ol", "p", "pre", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul"],
    ALLOWED_ATTR: ["href", "title", "align", "class", "start"],
    ALLOW_DATA_ATTR: false,
    ALLOW_ARIA_ATTR: false,
  };
  // `class` only as marked writes it on code blocks (language-python), for highlight.js: a message
  // must not borrow the page's own classes.
  DOMPurify.addHook("uponSanitizeAttribute", (node, data) => {
    if (data.attrName === "class") data.keepAttr = node.nodeName === "CODE" && /^language-[\w+#-]+$/.test(data.attrValue);
  });
  // HTML written in a message is shown as the text it is (as it would be in a terminal), never
  // parsed: even inert, a parsed <style> would trip the CSP. Markdown's images become links (nothing
  // loads) and task boxes a box character.
  const RENDERER = {
    html({ text, block }) {
      const holder = document.createElement(block ? "p" : "span");
      holder.textContent = text;
      return block ? holder.outerHTML : holder.innerHTML;
    },
    image({ href, text }) {
      const link = document.createElement("a");
      link.href = href;
      link.textContent = text || href;
      return link.outerHTML;
    },
    checkbox({ checked }) { return checked ? "\u2611 " : "\u2610 "; },
  };

  function renderMarkdown(element, text) {
    element.innerHTML = DOMPurify.sanitize(marked.parse(text, { gfm: true, breaks: false }), SAFE_MARKDOWN);
    for (const code of element.querySelectorAll("pre > code")) {
      hljs.highlightElement(code);
      frameCode(code);
    }
  }

  // A code block gets a header bar with its language and a Copy button, above the code rather than
  // floating over it, so the button never narrows the block or hides the end of a long line.
  function frameCode(code) {
    const pre = code.parentElement;
    const frame = document.createElement("div");
    frame.className = "codeblock";
    const head = document.createElement("div");
    head.className = "code-head";
    const language = document.createElement("span");
    language.textContent = ((code.className.match(/language-([\w+#-]+)/) || [])[1]) || "code";
    const button = document.createElement("button");
    button.className = "copy";
    button.type = "button";
    button.textContent = "Copy";
    button.addEventListener("click", () => copy(code.textContent.replace(/\n$/, ""), button));
    head.append(language, button);
    pre.replaceWith(frame);
    frame.append(head, pre);
  }

  async function copy(text, button) {
    try {
      await navigator.clipboard.writeText(text);
    } catch (e) { // plain http on another host has no clipboard API: the old way still works
      const area = document.createElement("textarea");
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    button.textContent = "Copied";
    setTimeout(() => (button.textContent = "Copy"), 1500);
  }

  function addMessage(role, text) {
    const box = document.createElement("div");
    box.className = "message " + role;
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Parley";
    const body = document.createElement("div");
    body.className = "body";
    box.append(who, body);
    $("messages").append(box);
    renderMarkdown(body, text);
    const entry = { role, text, body, box };
    state.messages.push(entry);
    if (role === "user") addEditButton(entry);
    scrollDown();
    showRegenerate();
    return entry;
  }

  function scrollDown() {
    const list = $("messages");
    list.scrollTop = list.scrollHeight;
  }

  // While a reply streams, follow it only if the reader is at the bottom: someone who scrolled up
  // to read back stays where they are.
  function atBottom() {
    const list = $("messages");
    return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  }

  function markStopped(entry) {
    const mark = document.createElement("div");
    mark.className = "stopped-mark";
    mark.textContent = "\u25A0 stopped";
    mark.title = "This reply was stopped before its end";
    entry.box.append(mark);
  }

  // Regenerate needs a question to answer again: none on an empty chat.
  function showRegenerate() {
    $("regenerate").hidden = !state.messages.some((m) => m.role === "user");
  }

  // ---- Edit and resend: a user message becomes a text box; sending it replaces that message and
  // everything after it (the server's `edit`), as in ChatGPT.
  function addEditButton(entry) {
    const actions = document.createElement("div");
    actions.className = "actions";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "icon edit";
    button.title = "Edit and resend";
    button.setAttribute("aria-label", "Edit and resend");
    button.textContent = "\u270E";
    button.addEventListener("click", () => startEdit(entry));
    actions.append(button);
    entry.box.append(actions);
  }

  function startEdit(entry) {
    if (state.busy || entry.box.querySelector(".editor")) return;
    const editor = document.createElement("form");
    editor.className = "editor";
    const area = document.createElement("textarea");
    area.value = entry.text;
    area.rows = Math.min(12, entry.text.split("\n").length + 1);
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.textContent = "Cancel";
    const save = document.createElement("button");
    save.type = "submit";
    save.className = "primary";
    save.textContent = "Send";
    const buttons = document.createElement("div");
    buttons.className = "buttons";
    buttons.append(cancel, save);
    editor.append(area, buttons);
    entry.body.hidden = true;
    entry.box.append(editor);
    area.focus();
    const close = () => { editor.remove(); entry.body.hidden = false; };
    cancel.addEventListener("click", close);
    area.addEventListener("keydown", (event) => {
      if (event.key === "Escape") close();
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); editor.requestSubmit(); }
    });
    editor.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = area.value.trim();
      if (!text || state.busy) return;
      resend(entry, text).catch(reportError);
    });
  }

  async function resend(entry, text) {
    const index = state.messages.indexOf(entry);
    for (const m of state.messages.splice(index)) m.box.remove();
    addMessage("user", text);
    await stream("/v1/conversations/" + state.cid + "/messages", { content: text, params: params(), edit: index });
  }

  function showNotice(text) {
    $("notice").textContent = text || "";
    $("notice").hidden = !text;
  }

  // ---- Conversations ------------------------------------------------------------------------
  async function loadList() {
    const { data } = await api("GET", "/v1/conversations?limit=100");
    state.list = data;
    renderList();
  }

  // The list, filtered by the search box (title words, any case) and grouped by when each
  // conversation last changed: Today, Yesterday, Previous 7 days, Previous 30 days, then months.
  function renderList() {
    // A title being renamed in place stays: a refresh (a reply ending, a feedback click) would
    // otherwise remove the input under the user's cursor. Its own finish renders the list.
    if (state.renaming) return;
    const list = $("conversations");
    const words = $("search").value.toLowerCase().split(/\s+/).filter(Boolean);
    list.replaceChildren();
    let group = null;
    for (const c of state.list) {
      if (c.id === state.cid) $("title").textContent = c.title || "Parley";
      const title = (c.title || "").toLowerCase();
      if (!words.every((w) => title.includes(w))) continue;
      const when = dateGroup(c.updated_at);
      if (when !== group) {
        const heading = document.createElement("li");
        heading.className = "group";
        heading.textContent = group = when;
        list.append(heading);
      }
      list.append(listItem(c));
    }
    if (!list.children.length && words.length) {
      const none = document.createElement("li");
      none.className = "group";
      none.textContent = "No conversation matches";
      list.append(none);
    }
  }

  function dateGroup(seconds) {
    const day = (d) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
    const then = new Date(seconds * 1000);
    const days = Math.round((day(new Date()) - day(then)) / 86400000);
    if (days <= 0) return "Today";
    if (days === 1) return "Yesterday";
    if (days < 7) return "Previous 7 days";
    if (days < 30) return "Previous 30 days";
    return then.toLocaleDateString(undefined, { year: "numeric", month: "long" });
  }

  function listItem(c) {
    const item = document.createElement("li");
    item.dataset.id = c.id;
    item.className = c.id === state.cid ? "current" : "";
    const open = document.createElement("button");
    open.className = "open";
    open.textContent = c.title || "(untitled)";
    open.title = (c.title || "(untitled)") + " \u00B7 " + new Date(c.updated_at * 1000).toLocaleString();
    open.addEventListener("click", () => openConversation(c.id));
    const rename = document.createElement("button");
    rename.className = "icon rename";
    rename.title = "Rename";
    rename.setAttribute("aria-label", "Rename");
    rename.textContent = "\u270E";
    rename.addEventListener("click", () => renameInPlace(item, c));
    const remove = document.createElement("button");
    remove.className = "icon delete";
    remove.title = "Delete";
    remove.setAttribute("aria-label", "Delete");
    remove.textContent = "\u2715";
    remove.addEventListener("click", () => deleteConversation(c));
    item.append(open, rename, remove);
    return item;
  }

  async function openConversation(cid) {
    if (state.busy) stop();
    const c = await api("GET", "/v1/conversations/" + encodeURIComponent(cid));
    state.cid = c.id;
    location.hash = c.id;
    $("title").textContent = c.title || "Parley";
    $("system").value = c.system || "";
    for (const key of SETTINGS) if (key in c.params) $(key).value = c.params[key] ?? "";
    $("messages").replaceChildren();
    state.messages = [];
    for (const m of c.messages) {
      const entry = addMessage(m.role, m.content);
      if (m.stopped) markStopped(entry);
      if (m.role === "assistant") decorateReply(entry, m);
    }
    await showRatings(c.id);
    showNotice("");
    closeSidebar();
    await loadList();
  }

  function newChat() {
    if (state.busy) stop();
    state.cid = null;
    state.messages = [];
    history.replaceState(null, "", location.pathname);
    $("title").textContent = "Parley";
    $("messages").replaceChildren();
    showRegenerate();
    showNotice("");
    closeSidebar();
    loadList().catch(reportError);
    $("input").focus();
  }

  // Rename in the list itself: the title becomes a text box; Enter (or leaving it) saves, Escape cancels.
  function renameInPlace(item, c) {
    const input = document.createElement("input");
    input.className = "rename-input";
    input.value = c.title || "";
    input.setAttribute("aria-label", "New title");
    item.replaceChildren(input);
    input.focus();
    input.select();
    state.renaming = c.id;
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      state.renaming = null;
      const title = input.value.trim();
      if (save && title !== (c.title || "")) {
        await api("PATCH", "/v1/conversations/" + c.id, { title });
        if (c.id === state.cid) $("title").textContent = title || "Parley";
      }
      await loadList();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") finish(true).catch(reportError);
      if (event.key === "Escape") finish(false).catch(reportError);
    });
    input.addEventListener("blur", () => finish(true).catch(reportError));
  }

  async function deleteConversation(c) {
    if (!confirm("Delete \u201C" + (c.title || "(untitled)") + "\u201D?")) return;
    await api("DELETE", "/v1/conversations/" + c.id);
    if (c.id === state.cid) newChat();
    else await loadList();
  }

  // ---- Settings -----------------------------------------------------------------------------
  function params() {
    const p = {};
    for (const key of SETTINGS) {
      const raw = $(key).value.trim();
      if (raw !== "") p[key] = INTEGERS.includes(key) ? parseInt(raw, 10) : parseFloat(raw);
      else if (key === "seed") p.seed = null;
    }
    return p;
  }

  async function saveSystem() {
    if (state.cid) await api("PATCH", "/v1/conversations/" + state.cid, { system: $("system").value || null });
  }

  // ---- Sending, streaming, stop, regenerate -------------------------------------------------
  async function send(text) {
    if (!state.cid) {
      const c = await api("POST", "/v1/conversations", { system: $("system").value || null, params: params() });
      state.cid = c.id;
      history.replaceState(null, "", "#" + c.id);
    }
    addMessage("user", text);
    await stream("/v1/conversations/" + state.cid + "/messages", { content: text, params: params() });
  }

  async function regenerate() {
    if (!state.cid || state.busy) return;
    while (state.messages.length && state.messages[state.messages.length - 1].role === "assistant") {
      state.messages.pop().box.remove();
    }
    await stream("/v1/conversations/" + state.cid + "/regenerate", { params: params() });
  }

  async function stream(path, body) {
    setBusy(true);
    showNotice("");
    const reply = addMessage("assistant", "");
    reply.tokens = []; // each streamed token with its probability and alternatives (the confidence view)
    reply.box.classList.add("streaming");
    state.abort = new AbortController();
    let pending = false, stopped = false;
    const paint = () => {
      pending = false;
      const follow = atBottom();
      paintReply(reply);
      if (follow) scrollDown();
    };
    try {
      const response = await fetch(path, {
        method: "POST", headers: headers(), body: JSON.stringify(body), signal: state.abort.signal,
      });
      if (!response.ok) throw await failure(response);
      for await (const event of events(response)) {
        if (event.type === "start" && event.notice) showNotice(event.notice);
        else if (event.type === "delta") {
          reply.text += event.text;
          reply.tokens.push({ text: event.text, logprob: event.logprob, top: event.top || [] });
          if (!pending) { pending = true; requestAnimationFrame(paint); }
        } else if (event.type === "error") throw new Error(event.message);
        else if (event.type === "done" && event.finish_reason === "length") showNotice("The reply reached its length limit.");
      }
    } catch (e) {
      if (e.name === "AbortError") stopped = true;
      else reportError(e);
    } finally {
      paint();
      reply.box.classList.remove("streaming");
      if (!reply.text) { reply.box.remove(); state.messages.pop(); }
      else if (stopped) markStopped(reply);
      state.abort = null;
      setBusy(false);
      loadList().catch(reportError);
      if (reply.text) attachStored(reply).catch(reportError);
    }
  }

  function stop() {
    if (state.abort) state.abort.abort();
  }

  function setBusy(busy) {
    state.busy = busy;
    $("send").hidden = busy;
    $("stop").hidden = !busy;
    $("regenerate").disabled = busy;
  }

  function reportError(e) {
    showNotice("Error: " + e.message);
  }

  // ---- Confidence: tokens coloured by probability, alternatives on hover or tap ----------------
  // The numbers are the engine's own, sent with each streamed token (conversations_api.py); the buckets
  // are parley/explain/confidence.py's (a test keeps the two lists equal). Stored replies loaded from
  // the history carry no token data and stay Markdown.
  const CONFIDENCE_BUCKETS = [0.8, 0.5, 0.2];

  function confidenceBucket(logprob) {
    if (logprob === null || logprob === undefined) return 0;
    const p = Math.exp(logprob);
    const i = CONFIDENCE_BUCKETS.findIndex((threshold) => p >= threshold);
    return i === -1 ? CONFIDENCE_BUCKETS.length : i;
  }

  function percent(logprob) {
    if (logprob === null || logprob === undefined) return "?";
    const p = 100 * Math.exp(logprob);
    return p >= 0.1 ? p.toFixed(1) + "%" : "<0.1%";
  }

  function paintReply(reply) {
    if (state.confidence && reply.tokens) renderTokens(reply.body, reply.tokens);
    else renderMarkdown(reply.body, reply.text);
  }

  function renderTokens(element, tokens) {
    const holder = document.createElement("div");
    holder.className = "tokens";
    tokens.forEach((token, i) => {
      const span = document.createElement("span");
      span.className = "tok c" + confidenceBucket(token.logprob);
      span.dataset.index = i;
      if (token.logprob !== null && token.logprob !== undefined) span.dataset.logprob = token.logprob;
      span.textContent = token.text; // untrusted: text, never markup
      holder.append(span);
    });
    element.replaceChildren(holder);
  }

  function showAlternatives(span) {
    const reply = state.messages.find((m) => m.body.contains(span));
    const token = reply && reply.tokens && reply.tokens[span.dataset.index];
    if (!token) return;
    const box = $("alternatives");
    const title = document.createElement("div");
    title.className = "chosen";
    title.textContent = JSON.stringify(token.text) + "  " + percent(token.logprob);
    const list = document.createElement("ol");
    for (const [text, logprob] of token.top) {
      const item = document.createElement("li");
      const word = document.createElement("code");
      word.textContent = JSON.stringify(text);
      const share = document.createElement("span");
      share.textContent = percent(logprob);
      item.append(word, share);
      list.append(item);
    }
    box.replaceChildren(title, list);
    box.hidden = false;
    // Below the token, kept inside the window (phones are narrow).
    const at = span.getBoundingClientRect();
    const width = box.offsetWidth;
    box.style.left = Math.max(4, Math.min(at.left, window.innerWidth - width - 4)) + "px";
    const below = at.bottom + 4;
    box.style.top = (below + box.offsetHeight > window.innerHeight ? at.top - box.offsetHeight - 4 : below) + "px";
  }

  function hideAlternatives() {
    state.pinned = false;
    $("alternatives").hidden = true;
  }

  function setConfidence(on) {
    state.confidence = on;
    localStorage.setItem("parley.confidence", on ? "1" : "0");
    const button = $("toggle-confidence");
    button.setAttribute("aria-pressed", String(on));
    document.body.classList.toggle("confidence", on);
    hideAlternatives();
    for (const m of state.messages) if (m.tokens) paintReply(m);
  }

  function setupConfidence() {
    $("toggle-confidence").addEventListener("click", () => setConfidence(!state.confidence));
    const messages = $("messages");
    messages.addEventListener("mouseover", (event) => {
      if (event.target.classList.contains("tok") && !state.pinned) showAlternatives(event.target);
    });
    messages.addEventListener("mouseout", (event) => {
      if (event.target.classList.contains("tok") && !state.pinned) hideAlternatives();
    });
    // A click or a tap pins the alternatives open (a phone has no hover) until a tap elsewhere.
    messages.addEventListener("click", (event) => {
      if (event.target.classList.contains("tok")) {
        showAlternatives(event.target);
        state.pinned = true;
      } else hideAlternatives();
    });
    messages.addEventListener("scroll", hideAlternatives);
    document.addEventListener("keydown", (event) => { if (event.key === "Escape") hideAlternatives(); });
    setConfidence(localStorage.getItem("parley.confidence") === "1");
  }

  // ---- Feedback and versions: thumbs with a note, editing a reply, ‹1/2› between regenerations ----
  // Every judgement goes to /v1/conversations/{cid}/messages/{id}/... (the store keeps it for
  // `parley data prepare --source feedback`); the version shown is stored, so a reload shows it.
  async function attachStored(reply) {
    const cid = state.cid;
    const c = await api("GET", "/v1/conversations/" + encodeURIComponent(cid));
    const last = c.messages[c.messages.length - 1];
    if (cid === state.cid && last && last.role === "assistant" && state.messages[state.messages.length - 1] === reply) {
      decorateReply(reply, last);
    }
  }

  function decorateReply(entry, stored) {
    entry.id = stored.id;
    if (entry.bar) entry.bar.remove();
    const bar = document.createElement("div");
    bar.className = "feedback";
    const base = "/v1/conversations/" + encodeURIComponent(state.cid) + "/messages/" + stored.id;
    if ((stored.versions || 1) > 1) {
      const label = document.createElement("span");
      label.className = "versions";
      label.textContent = stored.version + "/" + stored.versions;
      const previous = feedbackButton("\u2039", "Previous version", () => showVersion(entry, base, stored.version - 1));
      const next = feedbackButton("\u203A", "Next version", () => showVersion(entry, base, stored.version + 1));
      previous.classList.add("previous");
      next.classList.add("next");
      previous.disabled = stored.version <= 1;
      next.disabled = stored.version >= stored.versions;
      bar.append(previous, label, next);
    }
    const up = feedbackButton("\uD83D\uDC4D", "Good reply", () => rate(entry, base, "good"));
    const down = feedbackButton("\uD83D\uDC4E", "Bad reply", () => rate(entry, base, "bad"));
    up.classList.add("rate-good");
    down.classList.add("rate-bad");
    const edit = feedbackButton("\u270E", "Edit this reply", () => editReply(entry, base));
    edit.classList.add("edit");
    bar.append(up, down, edit);
    entry.bar = bar;
    entry.box.append(bar);
  }

  function feedbackButton(text, title, action) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "icon";
    button.title = title;
    button.setAttribute("aria-label", title);
    button.textContent = text;
    button.addEventListener("click", () => action().catch(reportError));
    return button;
  }

  function markRating(entry, rating) {
    entry.bar.querySelector(".rate-good").setAttribute("aria-pressed", String(rating === "good"));
    entry.bar.querySelector(".rate-bad").setAttribute("aria-pressed", String(rating === "bad"));
  }

  async function rate(entry, base, rating) {
    const again = entry.bar.querySelector(".rate-" + rating).getAttribute("aria-pressed") === "true";
    let note = null;
    if (!again) { // a second click on the same thumb withdraws it
      note = prompt(rating === "good" ? "What was good? (optional)" : "What was wrong? (optional)", "");
    }
    const body = { rating: again ? null : rating, note: note || null };
    await api("POST", base + "/feedback", body);
    markRating(entry, body.rating);
  }

  async function showRatings(cid) {
    const { data } = await api("GET", "/v1/conversations/" + encodeURIComponent(cid) + "/feedback");
    for (const f of data) {
      const entry = state.messages.find((m) => m.id === f.message_id);
      if (entry && entry.bar && (f.kind === "good" || f.kind === "bad")) markRating(entry, f.kind);
    }
  }

  async function showVersion(entry, base, number) {
    const answer = await api("POST", base + "/versions/" + number);
    entry.text = answer.data[answer.version - 1];
    renderMarkdown(entry.body, entry.text);
    decorateReply(entry, { id: answer.id, version: answer.version, versions: answer.data.length });
  }

  async function editReply(entry, base) {
    const area = document.createElement("textarea");
    area.className = "edit-reply";
    area.value = entry.text;
    area.rows = Math.min(12, entry.text.split("\n").length + 1);
    const save = document.createElement("button");
    save.type = "button";
    save.className = "save-edit";
    save.textContent = "Save";
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.textContent = "Cancel";
    const editor = document.createElement("div");
    editor.className = "editor";
    editor.append(area, save, cancel);
    entry.body.hidden = true;
    entry.bar.hidden = true;
    entry.box.append(editor);
    area.focus();
    const close = () => { editor.remove(); entry.body.hidden = false; entry.bar.hidden = false; };
    cancel.addEventListener("click", close);
    save.addEventListener("click", () => (async () => {
      const text = area.value.trim();
      if (!text) return;
      const stored = await api("PATCH", base, { content: text });
      close();
      entry.text = stored.content;
      renderMarkdown(entry.body, entry.text);
      decorateReply(entry, stored);
    })().catch(reportError));
  }

  // ---- Narrow windows: the conversation list slides over the chat -----------------------------
  function closeSidebar() {
    document.body.classList.remove("sidebar-open");
    $("scrim").hidden = true;
  }

  function start() {
    marked.use({ gfm: true, renderer: RENDERER });
    $("fallback").hidden = true;
    $("app").hidden = false;
    showRegenerate();
    $("api-key").value = localStorage.getItem("parley.key") || "";
    $("api-key").addEventListener("change", () => {
      localStorage.setItem("parley.key", $("api-key").value.trim());
      boot().catch(reportError);
    });
    $("new-chat").addEventListener("click", newChat);
    setupConfidence();
    $("toggle-settings").addEventListener("click", () => ($("settings").hidden = !$("settings").hidden));
    $("toggle-sidebar").addEventListener("click", () => {
      document.body.classList.add("sidebar-open");
      $("scrim").hidden = false;
    });
    $("scrim").addEventListener("click", closeSidebar);
    $("search").addEventListener("input", renderList);
    $("system").addEventListener("change", () => saveSystem().catch(reportError));
    $("stop").addEventListener("click", stop);
    $("regenerate").addEventListener("click", () => regenerate().catch(reportError));
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      const text = $("input").value.trim();
      if (!text || state.busy) return;
      $("input").value = "";
      send(text).catch(reportError);
    });
    $("input").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("composer").requestSubmit();
      }
    });
    boot().catch(reportError);
  }

  async function boot() {
    const models = await api("GET", "/v1/models");
    $("model").textContent = models.data[0].id;
    await loadList();
    const cid = decodeURIComponent(location.hash.slice(1));
    if (cid) await openConversation(cid).catch(() => newChat());
  }

  start();
})();
