// Easel form checks (issue #25): a bad number in the txt2img / img2img settings is named
// beside its field as soon as the box is left, and Generate is held back while one is
// there. Gradio's slider would otherwise clamp the typed value into its range when the
// box loses focus (width 10 silently becomes 64, an empty Steps box becomes 1); the
// blur is stopped for a bad value so the box keeps what the person typed.
// Runs as a gr.HTML `js_on_load` body; installs its listeners once per page.
if (!window.easelFormChecks) {
  window.easelFormChecks = true;
  const PANELS = ["txt2img", "img2img"];
  // Fields whose value must be a multiple of the slider's step (the latent grid).
  const MULTIPLE_OF_STEP = ["width", "height", "hr_resize_x", "hr_resize_y"];

  const panelOf = (el) => PANELS.find((p) => el.closest(`[id^="${p}_"]`)) || null;
  const fieldBlock = (box) => box.closest(PANELS.map((p) => `[id^="${p}_"]`).join(","));
  const labelOf = (block) => {
    const title = block.querySelector('[data-testid="block-info"]') ||
      block.querySelector("label");
    return (title ? title.textContent : block.id).trim();
  };

  // The reason a box's text is refused, or null when it is fine.
  const problem = (box) => {
    const block = fieldBlock(box);
    const text = box.value.trim();
    if (text === "") return "is empty: enter a number";
    const value = Number(text);
    if (!Number.isFinite(value)) return `${text} is not a number`;
    const min = box.getAttribute("min"), max = box.getAttribute("max");
    const step = Number(box.getAttribute("step"));
    if (min !== null && min !== "" && value < Number(min)) {
      return `${value} is below the minimum ${min}`;
    }
    if (max !== null && max !== "" && value > Number(max)) {
      return `${value} is above the maximum ${max}`;
    }
    const name = block.id.slice(panelOf(block).length + 1);
    if (MULTIPLE_OF_STEP.includes(name) && step > 1 && value % step !== 0) {
      return `${value} is not a multiple of ${step}`;
    }
    if (step && Number.isInteger(step) && !Number.isInteger(value)) {
      return `${value} is not a whole number`;
    }
    return null;
  };

  // Show (or clear) the message under the field; the full text names the field.
  const mark = (box) => {
    const block = fieldBlock(box);
    if (!block) return null;
    const reason = problem(box);
    let note = block.querySelector(":scope > .easel-field-error");
    if (!reason) {
      if (note) note.remove();
      delete block.dataset.easelInvalid;
      return null;
    }
    if (!note) {
      note = document.createElement("div");
      note.className = "easel-field-error";
      note.setAttribute("role", "alert");
      block.appendChild(note);
    }
    block.dataset.easelInvalid = "1";
    note.textContent = `${labelOf(block)}: ${reason}`;
    return note.textContent;
  };

  const checked = (el) => el && el.matches && el.matches('input[type="number"]') &&
    panelOf(el) && fieldBlock(el);

  document.addEventListener("blur", (event) => {
    if (!checked(event.target)) return;
    // A bad value: keep it as typed (Gradio's own blur handler would clamp it).
    if (mark(event.target)) event.stopImmediatePropagation();
  }, true);

  document.addEventListener("input", (event) => {
    const box = event.target;
    if (checked(box) && fieldBlock(box).dataset.easelInvalid) mark(box);
    // Dragging the range slider fixes the number box: re-check it after Gradio's update.
    if (box && box.matches && box.matches('input[type="range"]') && panelOf(box)) {
      const block = fieldBlock(box);
      const number = block && block.querySelector('input[type="number"]');
      if (number && block.dataset.easelInvalid) requestAnimationFrame(() => mark(number));
    }
  }, true);

  // Generate (click, Ctrl+Enter) with a bad field: nothing is sent, the reasons show in
  // the result panel above the gallery until the next Generate.
  document.addEventListener("click", (event) => {
    const button = event.target.closest && event.target.closest(
      PANELS.map((p) => `#${p}_generate`).join(","));
    if (!button) return;
    const panel = panelOf(button);
    const boxes = [...document.querySelectorAll(`[id^="${panel}_"] input[type="number"]`)]
      .filter((box) => box.offsetParent !== null && fieldBlock(box));
    const reasons = boxes.map(mark).filter(Boolean);
    const area = document.getElementById(`${panel}_form_checks`);
    if (area) area.querySelectorAll(".easel-error").forEach((el) => el.remove());
    if (!reasons.length) return;
    event.preventDefault();
    event.stopImmediatePropagation();
    if (!area) return;
    const shown = document.createElement("div");
    shown.className = "easel-error";
    shown.setAttribute("role", "alert");
    const title = document.createElement("strong");
    title.textContent = "Error";
    const text = document.createElement("span");
    text.className = "easel-error-text";
    text.textContent = ` ${reasons.join("; ")}`;
    shown.append(title, text);
    area.appendChild(shown);
  }, true);
}
