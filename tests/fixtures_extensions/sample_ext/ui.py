"""The sample extension's UI: only webui imports this file (it needs gradio)."""
import gradio as gr


def ui_tabs(runtime):
    def build():
        gr.Markdown("Sample extension tab", elem_id="sample_ext_markdown")
    return [("Sample", build)]
