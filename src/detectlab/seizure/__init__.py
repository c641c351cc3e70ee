"""seizure: inter-patient EEG seizure detection with a domain-adversarial CNN-BiLSTM (Tazaki et al.)."""
