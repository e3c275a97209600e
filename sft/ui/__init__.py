"""`python -m sft.ui`: a local web page to compose, validate, launch and watch runs and sweeps (Gradio).

Only `app` and `__main__` import gradio (the `ui` extra); the rest is plain Python the tests call directly.
"""
