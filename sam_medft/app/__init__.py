"""`sam-medft app`: a local web app to look at a fine-tuned model's masks on your own scans,
prompt it by clicking, correct its masks and save them (see `server.serve`)."""
