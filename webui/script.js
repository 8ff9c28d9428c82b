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

  // ------------------------------------------------------------ icon buttons (issue #25)
  // Gradio 6 buttons take no `title`, so the page gives every icon-only button a tooltip
  // and an aria-label from its id (or, for Gradio's own and unknown ones, its symbol).
  // Where no font draws the emoji (a bare Linux box), the symbol is replaced by a word.
  const TIPS = {  // id, or id less its "txt2img_"/"img2img_" prefix: [tooltip, short word]
    refresh_sd_model_checkpoint: ["Refresh the list of checkpoints", "Refresh"],
    paste: ["Read generation parameters from the prompt, or from the last generation if "
            + "the prompt is empty, into the fields", "Read"],
    clear_prompt: ["Clear the prompt and the negative prompt", "Clear"],
    extra_networks: ["Show or hide the extra networks (LoRA, embeddings, checkpoints)", "Networks"],
    extra_networks_refresh: ["Refresh the extra-network cards", "Refresh"],
    style_apply: ["Apply the selected styles to the prompts", "Apply"],
    styles_edit_button: ["Edit styles", "Edit"],
    res_switch_btn: ["Swap width and height", "Swap"],
    random_seed: ["Set the seed to -1: a new random seed every time", "Random"],
    reuse_seed: ["Reuse the seed of the last generation", "Reuse"],
    random_subseed: ["Set the variation seed to -1: a new random one every time", "Random"],
    reuse_subseed: ["Reuse the variation seed of the last generation", "Reuse"],
    open_folder: ["Open the output folder", "Folder"],
    save: ["Save the selected image (with its parameters)", "Save"],
    zip: ["Save the images as a zip archive", "Zip"],
    send_to_img2img: ["Send the image and its parameters to img2img", "img2img"],
    send_to_inpaint: ["Send the image and its parameters to img2img inpaint", "Inpaint"],
    send_to_extras: ["Send the image and its parameters to Extras", "Extras"],
    upscale: ["Hires fix the selected image with the current hires settings", "Upscale"],
    extras_refresh_upscalers: ["Refresh the list of upscalers", "Refresh"],
    modelmerger_refresh: ["Refresh the list of checkpoints", "Refresh"],
    train_refresh_embeddings: ["Refresh the list of embeddings", "Refresh"],
  };
  const SYMBOL_TIPS = {  // buttons without a known id: Gradio's own, or an extension's
    "\u{1f504}": ["Refresh", "Refresh"], "\u21ba": ["Reset to the default value", "Reset"],
    "\u22ee": ["More options", "More"], "\u{1f4d2}": ["Fill in all the values", "Fill"],
    "\u{1f3b2}": ["Random", "Random"], "\u267b\ufe0f": ["Reuse", "Reuse"],
    "\u2716": ["Close", "Close"], "\u00d7": ["Close", "Close"],
    "\u{1f4a5}": ["Run the preprocessor on the picture and show its map", "Preview"],
  };
  const isSymbol = (text) => text.length > 0 && [...text].length <= 3
    && !/[\p{L}\p{N}]/u.test(text);
  const tipFor = (button, text) => {
    const id = button.id || "";
    const own = TIPS[id] || TIPS[id.replace(/^(txt2img|img2img)_/, "")];
    return own || SYMBOL_TIPS[text] || SYMBOL_TIPS[text.replace(/\ufe0f/g, "")] || null;
  };

  // Whether a font draws `text` as something other than the missing-glyph box (or nothing).
  const drawn = {};
  const glyphDrawn = (text, family) => {
    const key = `${text}|${family}`;
    if (key in drawn) return drawn[key];
    const paint = (t) => {
      const canvas = document.createElement("canvas");
      canvas.width = canvas.height = 40;
      const pen = canvas.getContext("2d");
      pen.font = `28px ${family}`;
      pen.textBaseline = "top";
      pen.fillText(t, 4, 4);
      return pen.getImageData(0, 0, 40, 40).data.join(",");
    };
    const picture = paint(text);
    drawn[key] = picture !== paint("\u{10fffd}") && picture !== paint("");
    return drawn[key];
  };

  const labelIconButton = (button) => {
    const text = button.innerText.trim();
    if (button.dataset.easelIcon === text || !isSymbol(text)) return;
    const tip = tipFor(button, text);
    if (!tip) return;
    if (!button.title) button.title = tip[0];
    if (!button.getAttribute("aria-label")) button.setAttribute("aria-label", tip[0]);
    if (!glyphDrawn(text, getComputedStyle(button).fontFamily)) {
      button.textContent = tip[1];
      button.classList.add("easel-icon-word");
    }
    button.dataset.easelIcon = button.innerText.trim();
  };

  // Gradio 6 writes a Group's elem_id on two nested elements: keep the outer one only.
  const dropNestedIds = () => {
    for (const inner of document.querySelectorAll(".gr-group[id]")) {
      const outer = inner.parentElement && inner.parentElement.closest(`[id="${inner.id}"]`);
      if (outer) inner.removeAttribute("id");
    }
  };

  let pending = false;
  const tidy = () => {
    pending = false;
    document.querySelectorAll("button").forEach(labelIconButton);
    dropNestedIds();
    // The styles box shows no label (kept compact beside its buttons): say what it is.
    for (const box of document.querySelectorAll('[id$="_styles"] input')) {
      if (!box.placeholder) box.placeholder = "Styles";
    }
  };
  new MutationObserver(() => {
    if (!pending) { pending = true; requestAnimationFrame(tidy); }
  }).observe(document.body, { childList: true, subtree: true, characterData: true });
  tidy();
}
