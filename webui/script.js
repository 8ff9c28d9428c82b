() => {
  // Easel page script: the --theme choice, Ctrl+Enter to generate, Ctrl+Up/Down emphasis,
  // "Generate forever" (right-click Generate), and extra-network card clicks.
  const theme = "__EASEL_THEME__";
  if (theme === "dark" && !new URLSearchParams(location.search).has("__theme")) {
    document.body.classList.add("dark");
  }
  const TABS = ["txt2img", "img2img"];
  const visible = (el) => el && el.offsetParent !== null;
  const tabOf = (el) => TABS.find((t) => el.closest(`[id^="${t}_"]`)) || null;

  // Tell Gradio a script changed a text box, as typing would.
  const setText = (box, text, start, end) => {
    box.value = text;
    if (start !== undefined) box.setSelectionRange(start, end);
    box.dispatchEvent(new Event("input", { bubbles: true }));
  };

  document.addEventListener("keydown", (event) => {
    if (!(event.ctrlKey || event.metaKey)) return;
    if (event.key === "Enter") {
      const tab = event.target.closest("#txt2img_prompt, #txt2img_negative_prompt")
        ? "txt2img" : event.target.closest("#img2img_prompt, #img2img_negative_prompt")
        ? "img2img" : null;
      const button = tab && document.querySelector(`#${tab}_generate`);
      if (visible(button)) { event.preventDefault(); button.click(); }
      return;
    }
    if (event.key !== "ArrowUp" && event.key !== "ArrowDown") return;
    const box = event.target;
    if (box.tagName !== "TEXTAREA" || !box.closest(".prompt")) return;
    const edit = window.easelEditAttention(box.value, box.selectionStart, box.selectionEnd,
                                           event.key === "ArrowUp");
    if (!edit) return;
    event.preventDefault();
    setText(box, edit.text, edit.start, edit.end);
  });

  // ------------------------------------------------------------ emphasis editing
  // A1111's habit: Ctrl+Up/Down on a word or selection writes (text:1.1) and moves the
  // weight by 0.1; reaching 1 removes the parentheses. Without a selection the
  // emphasis group around the caret, or else the word under it, is edited.
  const STEP = 0.1;
  const DELIMITERS = " ,\n\t()[]<>|:";
  const fmt = (w) => String(parseFloat(w.toFixed(2)));

  const wordAt = (text, at) => {
    let start = at, end = at;
    while (start > 0 && !DELIMITERS.includes(text[start - 1])) start--;
    while (end < text.length && !DELIMITERS.includes(text[end])) end++;
    return [start, end];
  };

  const groupAround = (text, at) => {
    let depth = 0, open = -1, close = -1;
    for (let i = at - 1; i >= 0; i--) {
      if (text[i] === ")") depth++;
      else if (text[i] === "(") { if (depth === 0) { open = i; break; } depth--; }
    }
    if (open < 0) return null;
    depth = 0;
    for (let i = at; i < text.length; i++) {
      if (text[i] === "(") depth++;
      else if (text[i] === ")") { if (depth === 0) { close = i; break; } depth--; }
    }
    if (close < 0) return null;
    const weight = text.slice(open + 1, close).match(/:(-?\d*\.?\d+)$/);
    return [open + 1, close - (weight ? weight[0].length : 0)];
  };

  window.easelEditAttention = (text, start, end, up) => {
    if (start === end) [start, end] = groupAround(text, start) || wordAt(text, start);
    while (start < end && text[start] === " ") start++;
    while (end > start && text[end - 1] === " ") end--;
    if (start === end) return null;
    const delta = up ? STEP : -STEP;
    const selected = text.slice(start, end), before = text.slice(0, start);
    const after = text.slice(end);
    const weighted = after.match(/^:(-?\d*\.?\d+)\)/);
    if (before.endsWith("(") && weighted) {
      const weight = parseFloat(weighted[1]) + delta;
      const rest = after.slice(weighted[0].length);
      if (Math.abs(weight - 1) < 1e-6) {
        return { text: before.slice(0, -1) + selected + rest, start: start - 1, end: end - 1 };
      }
      return { text: `${before}${selected}:${fmt(weight)})${rest}`, start, end };
    }
    if (before.endsWith("(") && after.startsWith(")")) {  // (x) weighs 1.1
      return { text: `${before}${selected}:${fmt(1.1 + delta)}${after}`, start, end };
    }
    return { text: `${before}(${selected}:${fmt(1 + delta)})${after}`, start: start + 1,
             end: end + 1 };
  };

  // ------------------------------------------------------------ generate forever
  const forever = {};
  const menu = document.createElement("div");
  menu.id = "easel_context_menu";
  menu.className = "easel-context-menu";
  menu.hidden = true;
  document.body.appendChild(menu);
  document.addEventListener("click", (event) => {
    // Only a person's click elsewhere closes it (the forever loop's own clicks do not).
    if (event.isTrusted && !menu.contains(event.target)) menu.hidden = true;
  });

  document.addEventListener("contextmenu", (event) => {
    // On Generate, or on Interrupt, which takes its place while a job runs.
    const target = event.target.closest(".generate-button, .interrupt-button");
    if (!target) return;
    event.preventDefault();
    const tab = tabOf(target);
    const button = document.querySelector(`#${tab}_generate`);
    menu.innerHTML = "";
    const item = document.createElement("div");
    item.className = "easel-context-item";
    item.id = `${tab}_generate_forever_toggle`;
    item.textContent = forever[tab] ? "Cancel generate forever" : "Generate forever";
    item.addEventListener("click", () => {
      forever[tab] = !forever[tab];
      menu.hidden = true;
      if (forever[tab] && visible(button)) button.click();
    });
    menu.appendChild(item);
    menu.style.left = `${event.pageX}px`;
    menu.style.top = `${event.pageY}px`;
    menu.hidden = false;
  });

  // While "forever" is on, a Generate button that comes back (the job ended) is clicked.
  let lastClick = 0;
  setInterval(() => {
    for (const tab of TABS) {
      const button = document.querySelector(`#${tab}_generate`);
      if (forever[tab] && visible(button) && Date.now() - lastClick > 1500) {
        lastClick = Date.now();
        button.click();
      }
    }
  }, 500);

  // ------------------------------------------------------------ extra-network cards
  document.addEventListener("click", (event) => {
    const card = event.target.closest(".extra-network-card");
    if (!card) return;
    const tab = tabOf(card);
    if (!tab) return;
    const value = card.dataset.value;
    if (card.dataset.kind === "checkpoint") {
      const box = document.querySelector(
        `#${tab}_extra_networks_checkpoint textarea, #${tab}_extra_networks_checkpoint input`);
      if (box) setText(box, value);
      return;
    }
    const prompt = document.querySelector(`#${tab}_prompt textarea`);
    if (!prompt) return;
    const text = prompt.value;
    const without = withoutCardTag(text, card);  // a second click takes it out (A1111)
    if (without !== null) { setText(prompt, without); return; }
    const joiner = text === "" || /[\s,]$/.test(text) ? "" : " ";
    setText(prompt, text + joiner + value);
  });

  // The prompt less the card's tag (a LoRA at any weight) and one separator before it;
  // null when the tag is not there.
  const withoutCardTag = (text, card) => {
    const name = card.dataset.name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    // An embedding's name counts as a whole word only (not inside a LoRA tag of that name).
    const tag = card.dataset.kind === "lora" ? `<lora:${name}:[^>]*>`
      : `(?<![\\w\\-:<])${name}(?![\\w\\-:>])`;
    const found = new RegExp(`(,?\\s*)${tag}`).exec(text);
    if (!found) return null;
    const rest = text.slice(found.index + found[0].length);
    const head = text.slice(0, found.index);
    return head === "" ? rest.replace(/^[\s,]+/, "") : head + rest;
  };
}
