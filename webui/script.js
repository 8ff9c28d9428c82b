() => {
  // Easel page script: the theme chosen with --theme, and A1111's Ctrl+Enter to generate.
  const theme = "__EASEL_THEME__";
  if (theme === "dark" && !new URLSearchParams(location.search).has("__theme")) {
    document.body.classList.add("dark");
  }
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    const inPrompt = event.target.closest("#txt2img_prompt, #txt2img_negative_prompt");
    const button = document.querySelector("#txt2img_generate");
    if (inPrompt && button && button.offsetParent !== null) {
      event.preventDefault();
      button.click();
    }
  });
}
