"""Station hardware: the camera (one interface, three backends) and GPIO buttons, LED and buzzer.

Only this package touches devices. Everything above it gets frames, JPEG bytes and queued events.
"""
