"""One Gradio tab per module. Tabs wire widgets to engine functions and format results; no maths here."""
